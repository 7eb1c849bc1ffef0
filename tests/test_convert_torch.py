"""`vision_jax.convert` against the live libraries, where PyTorch, torchvision and open_clip
are installed (they are not the project's dependencies; `test_convert.py` checks the same
against saved outputs everywhere else).

Full-size models, randomly initialised, saved as `.pth`, converted by the command line,
read back from its checkpoint and run on the same inputs.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from vision_jax import checkpointing, convert, models

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')
open_clip = pytest.importorskip('open_clip')

pytestmark = pytest.mark.xdist_group('convert_torch')


def _converted(tmp_path, model, source: str, arch: str):
  path, out = str(tmp_path / f'{arch}.pth'), str(tmp_path / arch)
  torch.save(model.state_dict(), path)
  result = subprocess.run([sys.executable, '-m', 'vision_jax.convert', '--from', source,
                           '--arch', arch, '--in', path, '--out', out],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr
  saved = checkpointing.read_latest(out)
  return (models.get_model(convert.convert_file(path, source, arch).model),
          {'params': saved['params'], **saved.get('model_state', {})})


@pytest.fixture(scope='module')
def images():
  torch.manual_seed(0)
  return torch.rand(2, 3, 224, 224)


@pytest.mark.parametrize('arch', ['resnet50', 'vit_b_16'])
@torch.no_grad()
def test_torchvision_logits(tmp_path, images, arch):
  model = getattr(torchvision.models, arch)().eval()
  for module in model.modules():  # Trained-looking statistics and a non-zero ViT head.
    if isinstance(module, torch.nn.BatchNorm2d):
      module.running_mean.uniform_(-0.2, 0.2)
      module.running_var.uniform_(0.5, 1.5)
    if isinstance(module, torch.nn.Linear):
      torch.nn.init.normal_(module.weight, std=0.02)
      torch.nn.init.normal_(module.bias, std=0.02)
  want = model(images).numpy()
  jax_model, variables = _converted(tmp_path, model, 'torchvision', arch)
  got = jax_model.apply(variables, images.numpy().transpose(0, 2, 3, 1))
  np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()), rtol=0)


@torch.no_grad()
def test_open_clip_embeddings(tmp_path, images):
  model = open_clip.create_model('ViT-B-32-quickgelu', pretrained=None).eval()
  tokens = open_clip.get_tokenizer('ViT-B-32')(['a photo of a cat.', 'a diagram'])
  jax_model, variables = _converted(tmp_path, model, 'open_clip', 'ViT-B-32-quickgelu')
  np.testing.assert_allclose(
      jax_model.apply(variables, images.numpy().transpose(0, 2, 3, 1), method='encode_image'),
      model.encode_image(images, normalize=True).numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(
      jax_model.apply(variables, tokens.numpy().astype(np.int32), method='encode_text'),
      model.encode_text(tokens, normalize=True).numpy(), atol=1e-4, rtol=0)


def test_the_byte_pair_tokenizer_reads_open_clips_vocabulary_file_as_open_clip_does():
  from vision_jax.data import bpe  # pylint: disable=g-import-not-at-top
  vocabulary = os.path.join(os.path.dirname(open_clip.__file__), 'bpe_simple_vocab_16e6.txt.gz')
  texts = ['a photo of a cat.', 'A DIAGRAM of 3 red squares!', "it's the dog's ball",
           'café au lait, naïve résumé', 'x' * 300]
  want = open_clip.get_tokenizer('ViT-B-32')(texts).numpy()
  np.testing.assert_array_equal(bpe.load(vocabulary).encode_batch(texts, max_len=77), want)
