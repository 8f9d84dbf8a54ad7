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
from ..errors import Cancelled
from .runs_explain import run_heatmaps, run_image_explanation, run_masks, split_rows
from .scaling import normalise_maps
from .support import (cam_layer_choices, image_scores, localisation_by_depth, localisation_view, row_masks,
                      same_image_across_depths, target_index)

__all__ = [
    "METHODS", "Cancelled", "Method", "SUPPORT_THRESHOLD", "attribute", "cam_layer", "cam_layer_choices",
    "check_method", "class_index", "consistency_degree", "explain_image", "get_method", "gradcam", "guided_gradcam",
    "heatmap_overlay", "heatmaps", "image_scores", "is_empty", "layer_choices", "lime_map", "lime_overlay",
    "localisation_by_depth", "localisation_view", "normalise_maps", "occlusion_map", "outside_share",
    "pointing_game", "predict_proba", "random_heatmap", "row_masks", "run_heatmaps", "run_image_explanation",
    "run_masks", "same_image_across_depths", "split_rows", "support_area", "support_region", "target_index",
    "write_overlay", "wrong_reason_gallery",
]
