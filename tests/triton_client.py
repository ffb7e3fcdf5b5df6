"""A tritonclient (HTTP) round trip against ``gtasr-serve triton`` (run by test_serve_triton.py in the
Triton virtual environment): wait for model 'gtasr', send one batch of files, save the answers.

    python tests/triton_client.py URL OUT_DIR FILE [FILE ...]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.http as http


def main(url: str, out_dir: str, *files: str) -> None:
    client = http.InferenceServerClient(url, connection_timeout=30, network_timeout=300)
    deadline = time.monotonic() + 120
    while True:  # bounded wait for the model
        try:
            if client.is_model_ready("gtasr"):
                break
        except Exception:  # noqa: BLE001 - the server may not listen yet
            pass
        if time.monotonic() > deadline:
            raise SystemExit("model 'gtasr' not ready within 120 s")
        time.sleep(1)
    data = np.array([[Path(f).read_bytes()] for f in files], dtype=np.object_)
    request = http.InferInput("image", list(data.shape), "BYTES")
    request.set_data_from_numpy(data)
    result = client.infer("gtasr", [request], outputs=[http.InferRequestedOutput("png", binary_data=True),
                                                       http.InferRequestedOutput("error", binary_data=True)])
    out = Path(out_dir)
    errors = []
    for i, (png, error) in enumerate(zip(result.as_numpy("png")[:, 0], result.as_numpy("error")[:, 0])):
        (out / f"{i}.png").write_bytes(png)
        errors.append(error.decode("utf-8"))
    config = client.get_model_config("gtasr")
    print(json.dumps({"errors": errors, "max_batch_size": config.get("max_batch_size"),
                      "inputs": [t["name"] for t in config["input"]],
                      "outputs": sorted(t["name"] for t in config["output"])}))


if __name__ == "__main__":
    main(*sys.argv[1:])
