"""A classifier cut at one call site into ``g`` (images → activations) and ``h`` (activations → logits)."""

from conceptlens.split.model_split import LinearHead, ModelSplit, list_layers

__all__ = ["LinearHead", "ModelSplit", "list_layers"]
