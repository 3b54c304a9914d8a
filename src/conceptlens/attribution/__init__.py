"""Where in the image a concept is: upsampled and implicit-differentiation concept maps, minimal masks,
and the saliency baselines they are compared with (occlusion, Grad-CAM)."""
