r"""SimCLR on MNIST, evaluated by linear probes on 1%, 10% and all labels and by kNN.

  python -m vision_jax.train --config experiments/self_supervised/simclr_mnist.py \
      --workdir /tmp/simclr_mnist

Two views per image (random resized crops of 30% to 100% of the area, then Gaussian
blur with probability 0.5: the digits are grey, so SimCLR's colour distortion has
nothing to act on), a ResNet-18 encoder with the 3x3 stem and no max pool at a quarter
of its width (16 filters in the first stage: 128-d features h), a 2-layer projection
head to 64 dimensions, NT-Xent with tau = 0.5 over the global batch of 256 images (512
views), LARS with lr 0.3 x 256/256, 10 epochs of warm-up then cosine decay, weight
decay 1e-6, 100 epochs. The encoder is then probed on frozen features (`probe`
evaluator: logistic regression on 1%, 10% and 100% of the training labels, balanced
per class, and a weighted kNN), beside the same probes on the encoder this run started
from (`probe_random_init`); `progress` runs the kNN alone every 500 steps, to watch.

On the embedded `digits` (1,437 train / 360 test images, 8x8 upsampled to 28x28; used
where `mnist` is not prepared), the 100 epochs are 500 steps: NT-Xent falls from
ln(511) = 6.24 to 4.88 (contrastive accuracy 0.37 on the last batches), and the test
accuracies, pretrained against the encoder this run started from, are

  probe 1% (14 labels)   0.633 vs 0.561     probe all (1,437)   0.983 vs 0.981
  probe 10% (144)        0.925 vs 0.886     kNN (k = 200)       0.947 vs 0.889

so pretraining helps most where labels are few, and a random CNN's features are
already strong on these blurred digits. 11 minutes of wall time on 2 CPU cores
(1 device), sharing them with other jobs.

Fine-tune the whole network on few labels from this run with
`experiments/self_supervised/finetune_mnist.py:init_from=/tmp/simclr_mnist`.

`mnist` comes from `--config.data.data_dir` (`tfds build mnist` where there is
network); a folder of MNIST images works with `--config.data.name=folder:/path`;
where `mnist` is not prepared, the embedded `digits` are used instead
(`data.fallback`). `:local` is a seconds-long smoke run on `digits`.
"""

from vision_jax import config_lib

VIEW_PP = ("copy('image', 'view1')|copy('image', 'view2')|"
           "random_resized_crop(28, area_min=0.3, key='view1')|"
           "random_resized_crop(28, area_min=0.3, key='view2')|"
           "gaussian_blur(0.5, key='view1')|gaussian_blur(0.5, key='view2')|"
           "keep('view1', 'view2')")


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use :local or nothing')

  config = config_lib.base_config()
  config.method = 'simclr'
  config.batch_size = 256
  config.total_epochs = 100
  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500

  config.data.name = 'mnist'
  config.data.fallback = 'digits'
  # decode(1): grey, whatever an image folder holds; resize lets 8x8 digits stand in.
  pp = 'decode(1)|resize(28)|value_range(0, 1)'
  config.data.pp_train = f'{pp}|{VIEW_PP}'
  config.data.input_shape = (28, 28, 1)
  config.data.num_classes = 10

  # cnn_mnist's network with 3x3 kernels, without its head and dropout: 256-d h.
  config.model.name = 'cnn'
  config.model.features = (32, 64)
  config.model.kernel_size = 3
  config.model.pooling = 'max'
  config.model.dense_features = (256,)
  config.model.use_batchnorm = True

  config.simclr = dict(temperature=0.5, projection_features=64)

  config.optimizer.name = 'lars'
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-6
  config.lr = 0.3
  config.lr_batch_base = 256
  config.schedule.name = 'cosine'
  config.schedule.warmup_epochs = 10

  config.evals.probe = config_lib.evaluator_config(
      type='probe', data=dict(split='test'), pp=pp, batch_size=500, every_steps=0)
  config.evals.probe_random_init = config_lib.evaluator_config(
      type='probe', data=dict(split='test'), pp=pp, batch_size=500, every_steps=0,
      encoder='initial')
  config.evals.progress = config_lib.evaluator_config(
      type='probe', data=dict(split='test'), pp=pp, batch_size=500, knn_only=True)

  if 'local' in args:
    config.data.name = 'digits'
    config.model.features = (8, 16)
    config.model.dense_features = (32,)
    config.simclr.projection_features = 8
    config.batch_size = 32
    config.total_epochs = None
    config.total_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 4
    config.schedule.warmup_epochs = None
    config.schedule.warmup_steps = 1
    for name in ('probe', 'probe_random_init', 'progress'):
      config.evals[name].batch_size = 120
      config.evals[name].label_fractions = (0.1, 1.0)
  return config
