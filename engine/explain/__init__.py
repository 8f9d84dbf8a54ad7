"""Support regions: the explanation-method registry, its maps of a trained run, their scores against lesion and
lung masks, faithfulness and sanity checks, and the explanation report."""
from .consistency import (SUPPORT_THRESHOLD, consistency_degree, outside_share, pointing_game, random_heatmap,
                          support_area, support_region)
from .diagnose import class_index, explain_image
from .gallery import wrong_reason_gallery
from .gradcam import gradcam
from .attributions import guided_gradcam
from .inference import predict_proba
from .layers import cam_layer, layer_choices
from .lime_maps import lime_map
from .methods import METHODS, Method, attribute, check_method, get_method, heatmaps, is_empty
from .occlusion import occlusion_map
from .overlay import heatmap_overlay, lime_overlay, write_overlay
from .runs_explain import run_heatmaps, run_image_explanation, run_masks, split_rows
from .scaling import normalise_maps

__all__ = [
    "METHODS", "Method", "SUPPORT_THRESHOLD", "attribute", "cam_layer", "check_method", "class_index",
    "consistency_degree", "explain_image", "get_method", "gradcam", "guided_gradcam", "heatmap_overlay", "heatmaps",
    "is_empty", "layer_choices", "lime_map", "lime_overlay", "normalise_maps",
    "occlusion_map", "outside_share", "pointing_game", "predict_proba", "random_heatmap", "run_heatmaps",
    "run_image_explanation", "run_masks", "split_rows", "support_area", "support_region", "write_overlay",
    "wrong_reason_gallery",
]
