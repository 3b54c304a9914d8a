"""What comes in: images (files, folders, datasets, presets, crops), models (the zoo), activation stores."""
