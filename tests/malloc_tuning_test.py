"""Tests for the glibc malloc settings (`ama_jax.process.malloc_tuning`)."""
import platform

import pytest

from ama_jax.process import malloc_tuning


def test_unknown_setting_names_the_choices(monkeypatch):
  monkeypatch.setenv(malloc_tuning.ENV, 'fastest')
  with pytest.raises(ValueError, match=r"'fastest'.*'fast', 'trim', 'off'"):
    malloc_tuning.tune()


def test_off_leaves_malloc_alone(monkeypatch):
  monkeypatch.setenv(malloc_tuning.ENV, 'off')
  assert malloc_tuning.tune() is False


@pytest.mark.parametrize('mode', ['fast', 'trim'])
def test_glibc_accepts_the_settings(monkeypatch, mode):
  if platform.libc_ver()[0] != 'glibc':
    pytest.skip('not glibc: tune() is a no-op here')
  monkeypatch.setenv(malloc_tuning.ENV, mode)
  assert malloc_tuning.tune()
