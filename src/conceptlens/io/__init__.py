"""What comes in: images (files, folders, datasets, presets), crops, models (the zoo), activation stores.

``cl.data`` is this package: ``cl.data.load_images``, ``cl.data.sample_images``, ``cl.data.crops``, … .
"""

from conceptlens.io.crops import CropSet, crop_activations, crop_images, crop_rows, crops, demo_set
from conceptlens.io.images import (
           IMAGE_EXTENSIONS,
           batched,
           load_images,
           load_pil,
           resize_center_crop,
           to_tensor01,
)
from conceptlens.io.presets import DEFAULT_PRESET, Preset
from conceptlens.io.samples import sample_image_names, sample_images
from conceptlens.io.sources import ImageSource

__all__ = ["DEFAULT_PRESET", "IMAGE_EXTENSIONS", "Preset", "batched", "load_images", "load_pil",
           "resize_center_crop", "sample_image_names", "sample_images", "to_tensor01", "crops", "demo_set",
           "CropSet", "crop_activations", "crop_images", "crop_rows", "ImageSource"]
