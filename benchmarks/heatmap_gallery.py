"""Every sample's explanation heatmap in one picture, made by the handler in-process.

    python -m benchmarks.heatmap_gallery --out docs/heatmaps.png
    python -m benchmarks.heatmap_gallery --method occlusion --sign all --out /tmp/occlusion.png

Each tile is the handler's own `heatmap_png` (the input beside its attributions), for the
predicted class, as a TorchServe worker would answer /explanations.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
from pathlib import Path

from PIL import Image

from benchmarks.cli import DEFAULT_EXPORT_DIR
from benchmarks.inprocess import Pipeline
from tests.support.servers import REPO_ROOT

GAP_PX = 8
COLUMNS = 2


def gallery(tiles: list[Image.Image], columns: int = COLUMNS) -> Image.Image:
    """Tiles of one size in a grid, left to right, top to bottom, on white."""
    width, height = tiles[0].size
    rows = -(-len(tiles) // columns)
    sheet = Image.new(
        "RGB", (columns * width + (columns - 1) * GAP_PX, rows * height + (rows - 1) * GAP_PX),
        "white",
    )  # fmt: skip
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        sheet.paste(tile, (column * (width + GAP_PX), row * (height + GAP_PX)))
    return sheet


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-dir", type=Path, default=DEFAULT_EXPORT_DIR)
    parser.add_argument("--samples", type=Path, default=REPO_ROOT / "samples")
    parser.add_argument("--method", default="integrated_gradients")
    parser.add_argument("--sign", default="positive", choices=("positive", "all"))
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)

    pipeline = Pipeline(args.export_dir)
    tiles = []
    for path in sorted(args.samples.glob("*.png")):
        body = json.dumps({"data": base64.b64encode(path.read_bytes()).decode(),
                           "method": args.method, "sign": args.sign}).encode()  # fmt: skip
        answer = json.loads(pipeline.explain([body])[0])
        if "heatmap_png" not in answer:
            raise SystemExit(f"{path.name}: {answer}")
        tiles.append(Image.open(io.BytesIO(base64.b64decode(answer["heatmap_png"]))).convert("RGB"))
        print(f"{path.name}: {answer['target_name']} ({answer['method']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    gallery(tiles).quantize(colors=256).save(args.out, optimize=True)  # docs stay small
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
