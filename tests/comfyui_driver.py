"""Drive the GTASR nodes inside a real ComfyUI checkout (run as a script by test_integrations_comfyui.py).

    python tests/comfyui_driver.py COMFYUI_DIR MODELS_DIR NODE_DIR OUT.npz

A separate process because ComfyUI's top-level modules (nodes, utils, server, app...) and its
global state must not leak into the test session. Loads the model with ComfyUI's own
UpscaleModelLoader from a folder registered with folder_paths.add_model_folder_path, upscales a
(B, H, W, C) batch with ComfyUI's ImageUpscaleWithModel and with the GTASR node, and saves the
results (and what the progress hook saw) for the test to check against gtasr_deploy.Upscaler.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import torch

from spandrel_shim import _declare_torchvision_ops  # the script's folder (tests/) is on sys.path


def main(comfy_dir: str, models: str, node_dir: str, out: str) -> None:
    _declare_torchvision_ops()
    sys.path.insert(0, comfy_dir)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management as mm
    import comfy.utils
    import folder_paths
    from comfy_extras.nodes_upscale_model import ImageUpscaleWithModel, UpscaleModelLoader

    # the custom node folder, imported as nodes.load_custom_node imports a folder
    name = node_dir.replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(name, f"{node_dir}/__init__.py")
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    node = package.NODE_CLASS_MAPPINGS["GTASRUpscale"]()
    tiles_mode = node.INPUT_TYPES()["required"]["mode"][1]["default"]

    folder_paths.add_model_folder_path("upscale_models", models)
    listed = folder_paths.get_filename_list("upscale_models")
    (model,) = UpscaleModelLoader.execute("gtasr_demo.safetensors").result
    facts = {"listed": listed, "arch": model.architecture.id, "default_seed": model.seed,
             "default_precision": model.precision, "display": package.NODE_DISPLAY_NAME_MAPPINGS,
             "tiles_mode": tiles_mode}
    model.precision = "fp32"

    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((2, 37, 45, 3), dtype=np.float32))
    alpha = torch.from_numpy(rng.random((2, 37, 45, 1), dtype=np.float32))
    results = {"image": image.numpy(), "alpha": alpha.numpy()}
    (results["builtin"],) = (t.numpy() for t in ImageUpscaleWithModel.execute(model, image).result)
    results["whole"] = node.upscale(model, image, 3, "whole image", 0, "fp32")[0].numpy()

    steps = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: steps.append((value, total)))
    results["tiles"] = node.upscale(model, image, 3, tiles_mode, 32, "fp32")[0].numpy()
    facts["steps"] = list(steps)
    results["rgba"] = node.upscale(model, torch.cat([image, alpha], dim=3), 3, tiles_mode, 32, "fp32")[0].numpy()

    steps.clear()

    def cancel_after_first(value, total, preview, node_id=None):  # the user presses Cancel mid-batch
        steps.append((value, total))
        mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(cancel_after_first)
    try:
        node.upscale(model, image, 3, tiles_mode, 32, "fp32")
        facts["interrupted"] = False
    except mm.InterruptProcessingException:
        facts["interrupted"] = True
    facts["steps_before_cancel"] = list(steps)
    np.savez(out, **results)
    print(json.dumps(facts))


if __name__ == "__main__":
    main(*sys.argv[1:5])
