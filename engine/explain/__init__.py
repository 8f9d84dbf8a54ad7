"""Support regions: Grad-CAM, Guided Grad-CAM, occlusion and LIME maps, their scores against lesion and lung masks,
and their cached versions for a trained run."""
from .consistency import (SUPPORT_THRESHOLD, consistency_degree, lung_uniform_heatmap, outside_share, pointing_game,
                          random_heatmap, support_area, support_region)
from .diagnose import class_index, explain_image
from .gallery import wrong_reason_gallery
from .gradcam import conv_layer, gradcam, guided_gradcam
from .inference import predict_proba
from .lime_maps import lime_map
from .methods import METHODS, check_method, heatmaps
from .occlusion import occlusion_map
from .overlay import heatmap_overlay, lime_overlay, write_overlay
from .runs_explain import run_consistency, run_heatmaps, run_image_explanation, run_masks, split_rows
from .scaling import normalise_maps

__all__ = [
    "METHODS", "SUPPORT_THRESHOLD", "check_method", "class_index", "consistency_degree", "conv_layer",
    "explain_image", "gradcam", "guided_gradcam", "heatmap_overlay", "heatmaps", "lime_map", "lime_overlay",
    "lung_uniform_heatmap", "normalise_maps", "occlusion_map", "outside_share", "pointing_game", "predict_proba",
    "random_heatmap", "run_consistency", "run_heatmaps", "run_image_explanation", "run_masks", "split_rows",
    "support_area", "support_region", "write_overlay", "wrong_reason_gallery",
]
