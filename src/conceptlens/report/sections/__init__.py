"""One module per extra report section (compare, maps, tree, edits, masks, sweep)."""
