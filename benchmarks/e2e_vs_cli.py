"""Does gtasr-bench's end-to-end row predict a timed gtasr-upscale run? (Both run the default pipeline.)

    OMP_WAIT_POLICY=PASSIVE python benchmarks/e2e_vs_cli.py samples > benchmarks/e2e_vs_cli.md

For each precision: gtasr-bench (demo preset, the embedded weights, torch, default tile 128, the
images as they are) and gtasr-upscale on the same folder with the same precision; compares the
bench's end-to-end total with the sum of the CLI's per-image seconds (its --json report: decode,
pipeline and encode of each file — process start-up and model loading are outside both).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path


def main(images: str) -> None:
    print("| precision | bench e2e total s | gtasr-upscale per-image sum s | difference |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for precision in ("fp32", "bf16"):
            report = tmp / f"bench_{precision}.json"
            subprocess.run(["gtasr-bench", "--preset", "demo", "--weights", "demo", "--backends", "torch",
                            "--precision", precision, "--tile", "128", "--images", images, "--repeat", "3",
                            "--threads", "2", "--cache-dir", str(tmp / "cache"), "--out", str(report)],
                           check=True, stdout=subprocess.DEVNULL)
            row = json.loads(report.read_text())["rows"][0]
            cli_json = tmp / f"cli_{precision}.json"
            subprocess.run(["gtasr-upscale", images, str(tmp / f"out_{precision}"), "--precision", precision,
                            "--threads", "2", "--json", str(cli_json), "-q"], check=True)
            cli_s = sum(r["seconds"] for r in json.loads(cli_json.read_text())["files"])
            bench_s = row["e2e"]["total_s"]
            print(f"| {precision} | {bench_s:.2f} | {cli_s:.2f} | {100 * (bench_s / cli_s - 1):+.1f}% |")


if __name__ == "__main__":
    main(sys.argv[1])
