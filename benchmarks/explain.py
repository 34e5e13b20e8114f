"""Where it looks: how well LayerCAM (taolu's) and Grad-CAM (the one weight per channel it was
chosen over) find the object that decides the class, at the last block and at an earlier
layer; and what --explain costs predict, side by side on the same run.

    .venv/bin/python benchmarks/explain.py
    .venv/bin/python benchmarks/explain.py --run runs/train --images 256

The task: noise with one bright bar at a random place; horizontal is class 0, vertical class
1 (the test's, tests/test_explain.py). A map "finds" the bar when its peak lies within a pixel
of the bar's 8x8 box; "mass" is the share of the map inside the box (1/9 of the image: a map
blind to the bar would put ~0.11 there).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

import taolu
from taolu.explain import activation_maps, find_layer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_explain import SIDE, bars, small_cnn  # noqa: E402  the test's task and net


def grad_cam(model: nn.Module, images: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017), for comparison: one weight per channel, the mean of
    its gradient, for the top class; (N, H, W) in 0..1."""
    kept = []
    handle = layer.register_forward_hook(lambda _m, _i, out: kept.append(out))
    try:
        logits = model(images.requires_grad_(True))
        score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        (gradient,) = torch.autograd.grad(score, kept[-1])
    finally:
        handle.remove()
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    maps = (weights * kept[-1]).sum(1, keepdim=True).clamp(min=0).detach()
    maps = nn.functional.interpolate(maps, size=images.shape[-2:], mode="bilinear")[:, 0]
    low, high = maps.flatten(1).min(1).values, maps.flatten(1).max(1).values
    return (maps - low.view(-1, 1, 1)) / (high - low).clamp(min=1e-12).view(-1, 1, 1)


def localisation(maps: torch.Tensor, boxes: list[tuple[int, int]]) -> tuple[float, float]:
    found, mass = 0, []
    for heat, (top, left) in zip(maps, boxes, strict=True):
        row, column = divmod(int(heat.argmax()), SIDE)
        found += top - 1 <= row <= top + 8 and left - 1 <= column <= left + 8
        mass.append(float(heat[top : top + 8, left : left + 8].sum() / heat.sum().clamp(1e-12)))
    return found / len(boxes), float(np.mean(mass))


def compare_methods(seeds: int) -> None:
    print("bars task, 256 test images per seed; found (peak in the box) and mass, mean of seeds")
    rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for seed in range(seeds):
        torch.manual_seed(seed)
        net = small_cnn()
        images, labels, _ = bars(512, seed=100 + seed)
        optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
        for _ in range(60):
            batch = torch.randint(0, len(images), (32,))
            loss = nn.functional.cross_entropy(net(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        test, _, boxes = bars(256, seed=1000 + seed)
        for where, name in (("last block (auto)", None), ("first conv's ReLU", "1")):
            layer = find_layer(net, test[:1], name)
            layer_maps, _ = activation_maps(net, test, layer)
            rows.setdefault(("LayerCAM", where), []).append(localisation(layer_maps, boxes))
            rows.setdefault(("Grad-CAM", where), []).append(
                localisation(grad_cam(net, test.clone(), layer), boxes)
            )
    for (method, where), values in rows.items():
        found, mass = np.mean(values, axis=0)
        print(f"  {method:9} at {where:18}  found {found:.3f}  mass {mass:.3f}")


def predict_cost(run: Path, count: int) -> None:
    from taolu.data.embedded import load_mnist5k

    images, _ = load_mnist5k()
    with tempfile.TemporaryDirectory() as folder:
        inputs = Path(folder) / "in"
        inputs.mkdir()
        for index in range(count):
            Image.fromarray(images[index]).save(inputs / f"{index}.png")
        taolu.predict(run, [inputs])  # warm up
        times = {}
        for label, options in (
            ("predict", {}),
            ("predict --explain", {"explain": Path(folder) / "out"}),
        ):
            started = time.perf_counter()
            taolu.predict(run, [inputs], **options)
            times[label] = time.perf_counter() - started
    plain, explained = times["predict"], times["predict --explain"]
    print(f"{count} mnist5k images, {run}:")
    ratio = explained / plain
    print(f"  predict {plain:.2f} s; predict --explain {explained:.2f} s ({ratio:.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run on mnist5k (default: train one, 2 epochs)")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    compare_methods(args.seeds)
    print(f"  ({time.perf_counter() - started:.1f} s)")
    with tempfile.TemporaryDirectory() as out:
        run = (
            args.run
            or taolu.train(
                data="mnist5k", epochs=2, out=out, progress=False, verbose=False, report=False
            ).run_dir
        )
        predict_cost(Path(run), args.images)


if __name__ == "__main__":
    main()
