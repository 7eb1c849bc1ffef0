"""Figures for the filters lecture: 2D filters on a photograph, 1D smoothing.

    python experiments/filters/demo.py --workdir DIR

Writes DIR/filters_chelsea.png (original, box blur, Gaussian blur, sharpen,
Sobel edges and Laplacian of Gaussian of skimage's `chelsea` cat) and
DIR/filters_1d.png (moving average and Gaussian smoothing of a seeded noisy
signal). Takes a few seconds on a CPU.
"""

import argparse
import os
import sys

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import skimage.color
import skimage.data

# Run as a script, Python puts this file's folder on sys.path, not the repo root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from vision_jax import filters  # pylint: disable=g-import-not-at-top

matplotlib.use('Agg')  # files only, no display needed

BLUR_SIGMA = 2.0


def plot_chelsea(path: str) -> None:
  """2x3 grid: original, box blur, Gaussian blur, sharpen, Sobel, Laplacian."""
  rgb = skimage.data.chelsea().astype(np.float32) / 255.0
  gray = skimage.color.rgb2gray(rgb).astype(np.float32)
  magnitude, _ = filters.sobel(gray)
  # Blur first: the raw Laplacian of a photo is mostly pixel noise.
  log = filters.laplacian(filters.blur(gray, sigma=1.0))
  log_limit = float(np.percentile(np.abs(log), 99))

  panels = [
      ('original', rgb, {}),
      (f'box blur, variance of σ={BLUR_SIGMA:g}', filters.blur(rgb, BLUR_SIGMA, kind='box'), {}),
      (f'Gaussian blur σ={BLUR_SIGMA:g}', filters.blur(rgb, BLUR_SIGMA), {}),
      # Unsharp masking overshoots [0, 1] at edges; clip only for display.
      ('sharpen (amount 1.5, σ=2)', np.clip(filters.sharpen(rgb, 1.5, sigma=2.0), 0, 1), {}),
      ('Sobel magnitude (gray)', magnitude, dict(cmap='gray', vmin=0)),
      ('Laplacian of Gaussian σ=1 (gray)', log,
       dict(cmap='RdBu_r', vmin=-log_limit, vmax=log_limit)),
  ]
  fig, axes = plt.subplots(2, 3, figsize=(13, 6.2), layout='constrained')
  for ax, (title, image, style) in zip(axes.flat, panels):
    ax.imshow(np.asarray(image), **style)
    ax.set_title(title)
    ax.axis('off')
  fig.savefig(path, dpi=90)
  plt.close(fig)


def plot_1d(path: str, seed: int = 0) -> None:
  """A noisy signal smoothed by a moving average and by a Gaussian of equal variance."""
  rng = np.random.default_rng(seed)
  t = np.linspace(0.0, 1.0, 400)
  clean = np.sin(2 * np.pi * 2 * t) + (t > 0.6)  # a smooth part and a step
  noisy = clean + 0.3 * rng.standard_normal(t.shape)

  radius, sigma = 12, np.sqrt(12 * 13 / 3)  # equal variances: r(r + 1)/3 = σ²
  gaussian = filters.gaussian_kernel(sigma)
  gaussian_radius = (len(gaussian) - 1) // 2
  # 'valid' keeps only complete windows: output k is centred on input k + radius.
  averaged = filters.moving_average(noisy, radius, mode='valid')
  smoothed = filters.convolve1d(noisy, gaussian, mode='valid')

  fig, (ax_signal, ax_kernel) = plt.subplots(
      1, 2, figsize=(13, 4), width_ratios=(3, 1), layout='constrained')
  ax_signal.plot(t, noisy, color='0.75', lw=0.8, label='noisy')
  ax_signal.plot(t, clean, 'k--', lw=1, label='clean')
  ax_signal.plot(t[radius:-radius], averaged, lw=1.8, label=f'moving average r={radius}')
  ax_signal.plot(t[gaussian_radius:-gaussian_radius], smoothed, lw=1.8,
                 label=f'Gaussian σ={sigma:.1f}')
  ax_signal.set_xlabel('t')
  ax_signal.set_title('1D smoothing (valid mode: complete windows only)')
  ax_signal.legend(loc='lower left')

  offsets = np.arange(-gaussian_radius, gaussian_radius + 1)
  box = np.where(np.abs(offsets) <= radius, 1 / (2 * radius + 1), 0.0)
  ax_kernel.step(offsets, box, where='mid', label='box')
  ax_kernel.plot(offsets, gaussian, label='Gaussian')
  ax_kernel.set_xlabel('offset j')
  ax_kernel.set_title('kernels (same variance)')
  ax_kernel.legend()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv: list[str] | None = None) -> list[str]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='folder for the PNGs (created)')
  args = parser.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  paths = [os.path.join(args.workdir, 'filters_chelsea.png'),
           os.path.join(args.workdir, 'filters_1d.png')]
  plot_chelsea(paths[0])
  plot_1d(paths[1])
  for path in paths:
    print(path)
  return paths


if __name__ == '__main__':
  main()
