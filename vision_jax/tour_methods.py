"""The lecture, in order: what the tour runs for each method, and what it shows of it.

Each `Method` is an ordinary experiment run (or, for the filters, the demo script):
its config, the overrides of each budget, the metrics the report puts beside the goals
of the experiment's docstring, and the figures it shows. `quick` overrides shorten a
recipe to a minute or two on 2 CPU cores, long enough for a recognisable result;
`full` runs the recipe itself; `smoke` (the tests) runs each experiment's `:local`.
"""

import dataclasses
import os
import sys
from typing import Mapping

STATE_FILE = 'tour.json'  # in the tour's folder: its budget
RESULT_FILE = 'tour_step.json'  # in each method's folder: done or failed, time, command
LOG_FILE = 'tour_log.txt'  # in each method's folder: everything its run printed


@dataclasses.dataclass(frozen=True)
class Goal:
  """A metric of a run's final evaluation, with the experiment's goal when it has one."""
  metric: str                  # the key in metrics.jsonl, e.g. 'eval/accuracy'
  label: str                   # what the report calls it
  target: float | None = None  # None: reported without a goal
  higher_is_better: bool = True

  def met(self, value: float) -> bool | None:
    if self.target is None:
      return None
    # Metrics are float32: 324 / 360 is written as 0.89999998.
    slack = 1e-6 * abs(self.target)
    return (value >= self.target - slack if self.higher_is_better
            else value <= self.target + slack)


@dataclasses.dataclass(frozen=True)
class Method:
  """One step of the tour.

  Attributes:
    key: its name on the command line (`--only`) and its workdir under the tour's.
    group: the lecture section it belongs to (`--only captioning` selects all of it).
    title: the report's heading.
    about: one or two sentences of HTML, with the lecture's formula where it has one.
    config: `experiments/...py[:args]`, or the path of a script when `script`.
    goals: the metrics shown beside the experiment's goals.
    figures: files under the run's workdir that the report shows.
    quick: `--config.` overrides for the quick budget.
    full: overrides for the full budget (to run a recipe whose data is not embedded).
    uses: `--config.` fields set to the workdir of an earlier method, by its key.
    quick_seconds: the expected wall time of the quick budget on 2 CPU cores.
    full_minutes: the same for the full budget, from the experiment's docstring.
    script: `config` is a script run with `--workdir`, not a training run.
  """
  key: str
  group: str
  title: str
  about: str
  config: str
  goals: tuple[Goal, ...] = ()
  figures: tuple[str, ...] = ()
  quick: Mapping[str, object] = dataclasses.field(default_factory=dict)
  full: Mapping[str, object] = dataclasses.field(default_factory=dict)
  uses: Mapping[str, str] = dataclasses.field(default_factory=dict)
  quick_seconds: int = 60
  full_minutes: float = 10.0
  script: bool = False


def _override_text(value) -> str:
  return repr(value) if isinstance(value, (tuple, list)) else str(value)


def command(method: Method, budget: str, workdir: str, *, python: str = sys.executable
            ) -> list[str]:
  """The command line that runs `method` in `workdir/<key>` at `budget`."""
  run_dir = os.path.join(workdir, method.key)
  if method.script:
    return [python, method.config, '--workdir', run_dir]
  config = method.config
  if budget == 'smoke':
    config += (',' if ':' in config else ':') + 'local'
  overrides = dict(method.quick if budget == 'quick' else
                   method.full if budget == 'full' else {})
  overrides.update({field: os.path.join(workdir, key) for field, key in method.uses.items()})
  return ([python, '-m', 'vision_jax.train', '--config', config, '--workdir', run_dir]
          + [f'--config.{k}={_override_text(v)}' for k, v in overrides.items()])


def reproduce_command(method: Method) -> str:
  """The command a reader of the report types to run `method`'s full recipe."""
  args = command(method, 'full', 'runs', python='python')
  if not method.script:
    args = args[:1] + ['-m', 'vision_jax.train'] + args[3:]
  return ' '.join(f'"{a}"' if ' ' in a or '(' in a else a for a in args)


def _quick(steps: int, more: Mapping[str, object] | None = None, *, warmup: bool = True,
           **eval_splits: str) -> dict[str, object]:
  """The quick budget's overrides: `steps` steps, a tenth of them warming up (the recipes'
  warm-ups outlast a quick run), evaluators on the `eval_splits` given by name (a slice
  of the test split: evaluation would otherwise outlast training), then `more`."""
  overrides: dict[str, object] = {'total_steps': steps}
  if warmup:
    overrides['schedule.warmup_steps'] = max(1, steps // 10)
  overrides.update({f'evals.{name}.data.split': split for name, split in eval_splits.items()})
  overrides.update(more or {})
  return overrides


def _probes_quick(*names: str) -> dict[str, str]:
  """Probes embed a training split: 4,000 scenes in the quick budget, not 20,000."""
  return {f'evals.{name}.train_split': 'train[:4000]' for name in names}


_CAPTION_ABOUT = {
    'rnn': 'A CNN encodes the image; its pooled feature, projected, is the LSTM\'s first '
           'hidden state, the only place the image enters: '
           'h<sub>0</sub> = W c, h<sub>t</sub> = LSTM(y<sub>t−1</sub>, h<sub>t−1</sub>).',
    'attention': 'Show, Attend and Tell: at each word the LSTM attends over the CNN\'s grid, '
                 'α<sub>t</sub> = softmax(f(h<sub>t−1</sub>, a<sub>i</sub>)), '
                 'z<sub>t</sub> = Σ<sub>i</sub> α<sub>t,i</sub> a<sub>i</sub>, and '
                 'z<sub>t</sub> joins the next input.',
    'transformer': 'A Transformer decoder y<sub>t</sub> = T<sub>D</sub>(y<sub>0:t−1</sub>, '
                   'c): causal self-attention over the words so far, cross-attention over '
                   'the CNN\'s grid features.',
    'vit': 'The image as 4x4 patches through a Vision Transformer, whose tokens the same '
           'Transformer decoder cross-attends to.',
}
_CAPTION_FIGURES = {
    'rnn': ('test/captions.png',),
    'attention': ('test/attention.png', 'test/captions.png'),
    'transformer': ('test/attention.png', 'test/captions.png'),
    'vit': ('test/attention.png', 'test/captions.png'),
}


def _captioner(decoder: str, title: str) -> Method:
  return Method(
      key=f'caption_{decoder}', group='captioning', title=f'Captioning: {title}',
      about=_CAPTION_ABOUT[decoder],
      config=f'experiments/vision_language/caption_scenes.py:decoder={decoder}',
      goals=(Goal('test/truthfulness', 'true captions (test)', 0.90),
             Goal('test/bleu4', 'BLEU-4 (test)'),
             Goal('test/cider', 'CIDEr-D (test)')),
      figures=_CAPTION_FIGURES[decoder], quick=_quick(150, test='test[:300]'),
      quick_seconds=75,
      full_minutes=25)


def _probe_goals(name: str) -> tuple[Goal, ...]:
  return (Goal('probe/probe_10pct/accuracy', f'{name}: linear probe on 10% of the labels'),
          Goal('probe/probe_all/accuracy', f'{name}: linear probe on all labels'),
          Goal('probe_random_init/probe_10pct/accuracy',
               'a random encoder: linear probe on 10% of the labels'))


METHODS: tuple[Method, ...] = (
    Method(
        key='filters', group='filters', title='Convolution and filters',
        about='A filter slides over the signal: (f ∗ g)[n] = Σ<sub>k</sub> f[k] g[n − k], '
              'in 2D (I ∗ K)[i, j] = Σ<sub>m,n</sub> I[i − m, j − n] K[m, n]. Box and '
              'Gaussian kernels blur, unsharp masking sharpens, Sobel and Laplacian '
              'kernels find edges.',
        config='experiments/filters/demo.py', script=True,
        figures=('filters_chelsea.png', 'filters_1d.png'), quick_seconds=5,
        full_minutes=0.2),
    Method(
        key='naive_bayes', group='naive_bayes', title='Naive Bayes on binary pixels',
        about='Pixels binarised and assumed independent given the class: '
              'ŷ = argmax<sub>c</sub> log P(c) + Σ<sub>i</sub> log P(x<sub>i</sub> | c), '
              'each P(x<sub>i</sub> = 1 | c) counted in one pass with Laplace smoothing.',
        config='experiments/classification/nb_digits.py',
        goals=(Goal('eval/accuracy', 'test accuracy', 0.90),),
        figures=('naive_bayes/class_pixel_probabilities.png', 'eval/predictions.png'),
        quick_seconds=15,
        full_minutes=0.4),
    Method(
        key='cnn', group='cnn', title='A convolutional network',
        about='Convolutions with ReLU and max pooling, then dense layers, trained by '
              'cross-entropy on the real 8x8 handwritten digits.',
        config='experiments/classification/cnn_digits.py',
        goals=(Goal('eval/accuracy', 'test accuracy', 0.99),),
        figures=('eval/predictions.png', 'eval/confusion_matrix.png'),
        quick=_quick(300), quick_seconds=25, full_minutes=1),
    Method(
        key='resnet', group='resnet', title='A residual network (ResNet-20)',
        about='Blocks that learn a residual, y = F(x) + x, so that depth does not hurt '
              'optimisation; the CIFAR ResNet-20 of He et al. (2015), here on the 40 '
              'colour-shape classes of the embedded scenes (CIFAR-10 needs a download).',
        config='experiments/classification/resnet_cifar10.py:depth=20',
        goals=(Goal('eval/accuracy', 'test accuracy'),),
        figures=('eval/predictions.png',),
        quick=_quick(300, {'data.name': 'scenes/single', 'data.num_classes': 40,
                           'batch_size': 64, 'schedule.boundaries_steps': (200, 260)},
                     warmup=False),
        full={'data.name': 'scenes/single', 'data.num_classes': 40, 'total_steps': 6_000,
              'schedule.boundaries_steps': (3_000, 4_500)},
        quick_seconds=170, full_minutes=25),
    Method(
        key='detection', group='detection', title='Object detection (FCOS)',
        about='Every location of a feature pyramid predicts a class score, its distances '
              'to the four sides of a box, and a centre-ness; non-maximum suppression '
              'keeps the best boxes. Box AP by pycocotools.',
        config='experiments/dense/detect_scenes.py:arch=fcos',
        goals=(Goal('test/AP50', 'box AP50 (test)', 0.90),
               Goal('test/AP', 'box AP (test)', 0.60)),
        figures=('test/detections.png',), quick=_quick(500, test='test[:500]'),
        quick_seconds=125,
        full_minutes=9),
    Method(
        key='segmentation', group='segmentation', title='Semantic segmentation (U-Net)',
        about='A class for every pixel: an encoder-decoder with skip connections (U-Net) '
              'trained by per-pixel cross-entropy; mean IoU over the classes.',
        config='experiments/dense/segment_scenes.py:arch=unet',
        goals=(Goal('test/mean_iou', 'mean IoU (test)', 0.85),),
        figures=('test/segmentations.png',),
        quick=_quick(300, {'batch_size': 32}, test='test[:500]'),
        quick_seconds=85, full_minutes=11),
    Method(
        key='instance_segmentation', group='instance_segmentation',
        title='Instance segmentation (CondInst)',
        about='A detector whose every location also predicts the weights of its own small '
              'mask head, applied to a shared mask feature map: one mask per object.',
        config='experiments/dense/instance_scenes.py',
        goals=(Goal('test/segm/AP50', 'mask AP50 (test)', 0.80),
               Goal('test/AP50', 'box AP50 (test)')),
        figures=('test/detections.png',), quick=_quick(300, test='test[:500]'),
        quick_seconds=145,
        full_minutes=13),
    _captioner('rnn', 'CNN + LSTM, the image as h₀'),
    _captioner('attention', 'CNN + LSTM with soft attention'),
    _captioner('transformer', 'CNN + Transformer decoder'),
    _captioner('vit', 'ViT encoder + Transformer decoder'),
    Method(
        key='vqa', group='vqa', title='Visual question answering',
        about='A CNN for the image, an LSTM for the question, fused by attention and '
              'classified over the answer vocabulary; the blind baseline of the '
              'experiment shows how much the image adds.',
        config='experiments/vision_language/vqa_scenes.py:model=full',
        goals=(Goal('eval/accuracy', 'accuracy (test; the goal: the blind baseline\'s 0.458 '
                    'plus 15 points)', 0.608),
               Goal('eval/accuracy_color', 'colour questions'),
               Goal('eval/accuracy_count', 'count questions')),
        figures=('eval/answers.png',), quick=_quick(400, eval='test[:500]'), quick_seconds=145,
        full_minutes=9),
    Method(
        key='video', group='video', title='Video classification (ViViT)',
        about='Clips cut into tubelets of 4x4x4 pixels, spatial attention within each '
              'time step then temporal attention across them: which of ten motions the '
              'shape makes.',
        config='experiments/video/video_scenes.py:arch=vivit',
        goals=(Goal('test/accuracy', 'accuracy, one clip (test)', 0.95),
               Goal('test_multi_clip/accuracy', 'accuracy, 4 clips (test)')),
        figures=('test/predictions.png', 'attention/temporal_attention.png'),
        quick=_quick(400), quick_seconds=90, full_minutes=8),
    Method(
        key='rotation', group='self_supervised', title='Self-supervised: rotation prediction',
        about='The pretext task: predict which of four rotations (0°, 90°, 180°, 270°) was '
              'applied; the encoder is then judged by a linear probe on few labels.',
        config='experiments/self_supervised/rotation_scenes.py',
        goals=(Goal('rotation/accuracy', 'rotation accuracy (test)'),) + _probe_goals('rotation'),
        figures=('rotation/rotations.png', 'probe/embedding.png'),
        quick=_quick(150, _probes_quick('probe', 'probe_random_init'), rotation='test[:1000]'),
        quick_seconds=110,
        full_minutes=12),
    Method(
        key='simclr', group='self_supervised', title='Self-supervised: SimCLR',
        about='Two augmented views of each image, an encoder and a projection head, and '
              'the NT-Xent loss over the batch: ℓ<sub>i,j</sub> = −log exp(sim(z<sub>i</sub>, '
              'z<sub>j</sub>)/τ) / Σ<sub>k≠i</sub> exp(sim(z<sub>i</sub>, z<sub>k</sub>)/τ).',
        config='experiments/self_supervised/simclr_scenes.py',
        goals=_probe_goals('SimCLR'), figures=('probe/embedding.png',),
        quick=_quick(40, _probes_quick('probe', 'probe_random_init', 'progress')),
        quick_seconds=80, full_minutes=12),
    Method(
        key='cpc', group='self_supervised', title='Self-supervised: contrastive predictive coding',
        about='A grid of patch encodings, a context that reads the rows above, and InfoNCE: '
              'predict the encoding k rows ahead against every other patch of the batch.',
        config='experiments/self_supervised/cpc_scenes.py',
        goals=_probe_goals('CPC'), figures=('probe/embedding.png',),
        quick=_quick(80, _probes_quick('probe', 'probe_random_init', 'progress')),
        quick_seconds=85, full_minutes=12),
    Method(
        key='autoencoder', group='generative', title='Autoencoder',
        about='An encoder to a 32-number code and a decoder back, trained to reconstruct '
              'the image (Bernoulli cross-entropy per pixel).',
        config='experiments/generative/ae_mnist.py',
        goals=(Goal('eval/reconstruction_loss', 'reconstruction loss (test, nats)',
                    higher_is_better=False),),
        figures=('eval/reconstructions.png',), quick=_quick(200),
        quick_seconds=60, full_minutes=1.5),
    Method(
        key='denoising_autoencoder', group='generative', title='Denoising autoencoder',
        about='The same network fed a corrupted image (a quarter of its pixels set to 0) and '
              'trained to reconstruct the clean one.',
        config='experiments/generative/ae_mnist.py:noise=mask',
        goals=(Goal('eval/reconstruction_loss', 'reconstruction loss of masked inputs',
                    higher_is_better=False),),
        figures=('eval/reconstructions.png',), quick=_quick(200),
        quick_seconds=50, full_minutes=1.5),
    Method(
        key='vae', group='generative', title='Variational autoencoder',
        about='An encoder q(z | x), a decoder p(x | z) and the evidence lower bound '
              'log p(x) ≥ E<sub>q</sub>[log p(x | z)] − KL(q(z | x) ‖ p(z)); samples are '
              'decoded draws of z ~ N(0, I).',
        config='experiments/generative/vae_mnist.py',
        goals=(Goal('eval/negative_elbo', 'negative ELBO (test, nats)',
                    higher_is_better=False),
               Goal('eval/iwae_nll', 'importance-weighted bound (test, nats)',
                    higher_is_better=False)),
        figures=('eval/samples.png', 'eval/reconstructions.png'),
        quick=_quick(300, {'vae.iwae_samples': 20}), quick_seconds=90,
        full_minutes=8),
    Method(
        key='gan', group='generative', title='Generative adversarial network (DCGAN)',
        about='min<sub>G</sub> max<sub>D</sub> E<sub>x</sub>[log D(x)] + '
              'E<sub>z</sub>[log(1 − D(G(z)))], one D step then one G step, each with its '
              'own optimizer; class-conditional, one row per class.',
        config='experiments/generative/gan_scenes.py',
        goals=(Goal('eval/d_real', 'D(x) on test images'),
               Goal('eval/d_fake', 'D(G(z)) on samples')),
        figures=('eval/samples.png',), quick=_quick(600, warmup=False), quick_seconds=90,
        full_minutes=3.5),
    Method(
        key='diffusion', group='generative', title='Diffusion (DDPM)',
        about='Noise is added over T steps, q(x<sub>t</sub> | x<sub>0</sub>) = '
              'N(√ᾱ<sub>t</sub> x<sub>0</sub>, (1 − ᾱ<sub>t</sub>) I), and a U-Net learns '
              'to predict it, L = ‖ε − ε<sub>θ</sub>(x<sub>t</sub>, t)‖²; sampling runs '
              'the chain backwards, with classifier-free guidance.',
        config='experiments/generative/ddpm_scenes.py',
        goals=(Goal('eval/simple_loss', 'L_simple (test)', higher_is_better=False),),
        figures=('eval/samples.png', 'eval/trajectory.png'),
        quick=_quick(250, {'evals.eval.grid_samples': 80}, eval='test[:320]'),
        quick_seconds=210, full_minutes=12),
    Method(
        key='clip', group='clip', title='CLIP: contrastive pre-training, zero-shot from label text',
        about='An image tower and a text tower trained so that matching image-caption '
              'pairs have the larger cosine similarity (a symmetric cross-entropy over the '
              'batch); then a classifier from label text alone: prompts such as "there is '
              'a red circle." for each class, several templates averaged, and each image '
              'assigned to the nearest.',
        config='experiments/vision_language/clip_scenes.py',
        goals=(Goal('zero_shot/accuracy', 'zero-shot top-1 (scenes/single test)', 0.80),
               Goal('zero_shot/top5_accuracy', 'zero-shot top-5'),
               Goal('retrieval/image_to_text/recall@1', 'image to text R@1 (scenes/multi test)')),
        figures=('zero_shot/zero_shot.png', 'retrieval/similarity.png'),
        quick=_quick(150, _probes_quick('probe')), quick_seconds=145,
        full_minutes=11),
    Method(
        key='judge', group='text_to_image', title='Text-to-image: the judge',
        about='A CNN classifier of the 40 colour-shape classes: it decides whether a '
              'generated image shows what its prompt asked for.',
        config='experiments/classification/cnn_scenes.py',
        goals=(Goal('eval/accuracy', 'test accuracy'),),
        figures=('eval/predictions.png',), quick=_quick(1000, {'batch_size': 64}),
        quick_seconds=125, full_minutes=5),
    Method(
        key='dalle_vqvae', group='text_to_image', title='Text-to-image: image tokens (VQ-VAE)',
        about='DALL-E\'s first stage: a VQ-VAE with an EMA codebook turns each 32x32 scene '
              'into an 8x8 grid of discrete tokens and decodes them back.',
        config='experiments/vision_language/dalle_scenes.py:stage=vqvae',
        goals=(Goal('reconstruction/psnr', 'reconstruction PSNR (test, dB)'),),
        figures=('reconstruction/reconstructions.png',), quick=_quick(300),
        quick_seconds=65, full_minutes=2.5),
    Method(
        key='dalle_prior', group='text_to_image', title='Text-to-image: DALL-E',
        about='An autoregressive Transformer over the caption\'s words followed by the '
              'image tokens; text to image is sampling the tokens after a prompt and '
              'decoding them. Faithfulness: the fraction of images for "a red circle." '
              '(and each other class) that the judge assigns to that class.',
        config='experiments/vision_language/dalle_scenes.py:stage=prior',
        goals=(Goal('text_to_image/faithfulness', 'faithfulness (40 class prompts)', 0.80),
               Goal('text_to_image/clip_score (project CLIP)', "CLIP score (the project's CLIP)")),
        figures=('text_to_image/class_prompts.png', 'text_to_image/captions.png'),
        uses={'dalle.vqvae_workdir': 'dalle_vqvae',
              'evals.text_to_image.classifier_workdir': 'judge',
              'evals.text_to_image.clip_workdir': 'clip'},
        quick=_quick(300), quick_seconds=110, full_minutes=15),
)

GROUPS: tuple[str, ...] = tuple(dict.fromkeys(m.group for m in METHODS))
