r"""A convolutional VAE on statically binarised MNIST, aiming at a test negative ELBO
<= 100 nats, with the importance-weighted bound (k = 1000) as the test log-likelihood.

  python -m vision_jax.train --config experiments/generative/vae_mnist.py \
      --workdir /tmp/vae_mnist

Images binarised at 0.5 (`binarize(0.5)`) for the Bernoulli decoder. Encoder: 3x3
convolutions with stride 2 to 32 and 64 channels (28 -> 14 -> 7), a 512-unit dense
layer and a linear layer to the mean and log-variance of a 32-dimensional diagonal
Gaussian; the decoder mirrors it with transposed convolutions to 28x28 logits. The
data (MNIST statically binarised at 0.5) and the convolutional layout are those of
TensorFlow's convolutional VAE tutorial (tensorflow.org/tutorials/generative/cvae),
with the dense layer and a larger latent added; the objective, one reparameterised
sample per image, is Kingma & Welling (2014), and the test bound Burda et al. (2016,
who use k = 5000). Adam 1e-3, 500 steps of warm-up then cosine decay, 100 epochs of
batch 128 (46,800 steps). The `generative` evaluator runs at the end only (k = 1000
decodes of every test image is the expensive part) and reports `eval/negative_elbo`,
`eval/iwae_nll`, `eval/reconstruction_nll` and `eval/kl` in nats per image, samples
from the prior, reconstructions and latent interpolations; the training ELBO is logged
every 200 steps. The MNIST numbers (aim: negative ELBO <= 100) are not measured here,
where MNIST is not prepared.

On the embedded `digits` (1,437 train / 360 test images, 8x8 upsampled to 28x28 and
binarised; used automatically where `mnist` is not prepared, `data.fallback`), the
same command's 100 epochs are 1,100 steps and reach a test negative ELBO of 98.0
nats (reconstruction 60.3 + KL 37.6) and an IWAE bound (k = 1000) of 76.9 nats,
against a training negative ELBO of 65.3 at the end: 1,437 images are too few for
this model, which overfits. That took 7.6 minutes of wall time (9.2 CPU minutes) on 1
device of an otherwise idle 2-core CPU, the k = 1000 evaluation of the 360 test
images about 3.5 minutes of it.
`mnist` itself is read from `--config.data.data_dir` (`tfds build mnist` where there
is network).

`:local` is a seconds-long smoke run on `digits` with a tiny model and k = 4.
"""

from vision_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use :local or nothing')

  config = config_lib.base_config()
  config.method = 'vae'
  config.batch_size = 128
  config.total_epochs = 100
  config.log_every_steps = 200
  config.eval_every_steps = 0  # At the end only: see the docstring.
  config.checkpoint_every_steps = 5_000

  config.data.name = 'mnist'
  config.data.fallback = 'digits'
  pp = 'decode(1)|resize(28)|value_range(0, 1)|binarize(0.5)'
  config.data.pp_train = pp
  config.data.input_shape = (28, 28, 1)
  config.data.num_classes = 10

  config.model.name = 'autoencoder'
  config.model.latent_dim = 32
  config.model.features = (32, 64)
  config.model.kernel_size = 3
  config.model.dense_features = (512,)

  config.vae = dict(likelihood='bernoulli', beta=1.0, iwae_samples=1000, iwae_chunk=10)

  config.optimizer.name = 'adam'
  config.lr = 1e-3
  config.schedule.name = 'cosine'
  config.schedule.warmup_steps = 500

  config.evals.eval = config_lib.evaluator_config(
      type='generative', pred='', data=dict(split='test'), pp=pp, batch_size=500,
      grid_samples=64, reconstruction_images=8, interpolation_pairs=4,
      interpolation_points=8)

  if 'local' in args:
    config.data.name = 'digits'
    config.model.latent_dim = 4
    config.model.features = (4, 8)
    config.model.dense_features = ()
    config.vae.iwae_samples = 4
    config.vae.iwae_chunk = 2
    config.batch_size = 32
    config.total_epochs = None
    config.total_steps = 4
    config.log_every_steps = 2
    config.checkpoint_every_steps = 4
    config.schedule.warmup_steps = 1
    config.evals.eval.batch_size = 120
    config.evals.eval.grid_samples = 16
  return config
