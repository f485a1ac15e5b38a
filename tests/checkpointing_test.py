"""Tests of the latest/best checkpoint managers and read-only restore."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from ama_jax.checkpoints import checkpoint_files
from ama_jax.checkpoints import checkpoint_reading
from ama_jax.checkpoints import checkpointing
from ama_jax import errors
from ama_jax.reporting import json_safe
from ama_jax.training import train_state
from configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tiny_state(config, seed: int = 0) -> train_state.AMAState:
  """An AMAState with the real optimizers, tiny params and non-zero moments."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  ae_tx, critic_tx = train_state.make_optimizers(config)
  ae = train_state.PlayerState.create(
      apply_fn=None, tx=ae_tx,
      params={'encoder': {'w': normal(3, 2)}, 'generator': {'b': normal(2)}},
      batch_stats={'bn': {'mean': normal(2), 'var': normal(2) ** 2}})
  critic = train_state.PlayerState.create(
      apply_fn=None, tx=critic_tx, params={'dense': {'w': normal(4, 1)}},
      batch_stats={})
  ae = ae.apply_gradients(grads=jax.tree.map(jnp.ones_like, ae.params))
  critic = critic.apply_gradients(
      grads=jax.tree.map(jnp.ones_like, critic.params))
  return train_state.AMAState(ae=ae, critic=critic)


def _at_step(state: train_state.AMAState, step: int) -> train_state.AMAState:
  """The state with its step set and the AE params shifted by `step`."""
  ae = state.ae.replace(
      step=jnp.asarray(step, jnp.int32),
      params=jax.tree.map(lambda p: p + step, state.ae.params))
  return state.replace(ae=ae)


class _StateTest(parameterized.TestCase):
  """The runlocal config, a tiny state (shared) and an empty workdir."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = default.get_config('runlocal')
    cls.state = _tiny_state(cls.config)

  def setUp(self):
    super().setUp()
    self.workdir = pathlib.Path(self.create_tempdir().full_path)


class CheckpointingTest(_StateTest):

  def _meta(self, step, val_auroc=0.5):
    return {'config': json_safe.config_to_dict(self.config),
            'step': step, 'epoch': 1, 'mu': 1.5, 'sigma': 0.25,
            'threshold': 3.0, 'threshold_fpr': 0.05,
            'image_shape': (28, 28, 1), 'val_auroc': val_auroc}

  def _save(self, kind, steps_and_aurocs):
    ckpts = checkpointing.CheckpointManagers(self.workdir)
    saved = []
    for step, auroc in steps_and_aurocs:
      save = ckpts.save_best if kind == 'best' else ckpts.save_latest
      saved.append(save(step, _at_step(self.state, step),
                        self._meta(step, auroc)))
    ckpts.close()
    return saved

  def test_round_trip_restores_state_optimizer_step_and_meta(self):
    state = _at_step(self.state, 7)
    self._save('latest', [(7, 0.5)])
    ckpts = checkpointing.CheckpointManagers(self.workdir)
    restored, meta = ckpts.restore_latest(self.state)
    ckpts.close()
    chex.assert_trees_all_equal(restored, jax.device_get(state))
    self.assertEqual(int(restored.step), 7)
    # Adam's count (scale_by_adam: the step applies the rate itself).
    self.assertEqual(int(restored.ae.opt_state.inner_states['encoder']
                         .inner_state.count), 1)
    # Tuples come back as lists in JSON and as tuples in the config.
    expected = {**self._meta(7), 'image_shape': [28, 28, 1]}
    del expected['config']
    self.assertEqual({k: v for k, v in meta.items() if k != 'config'},
                     expected)
    config = json_safe.config_from_dict(meta['config'])
    self.assertEqual(config.to_dict(), self.config.to_dict())

  def test_restore_into_eval_shape_tree_gives_host_arrays(self):
    self._save('latest', [(3, 0.5)])
    abstract = jax.eval_shape(lambda: self.state)
    restored, _ = checkpoint_reading.restore(self.workdir, abstract,
                                             kind='latest')
    self.assertIsInstance(restored.ae.params['encoder']['w'], np.ndarray)
    chex.assert_trees_all_close(restored,
                                jax.device_get(_at_step(self.state, 3)))

  def test_latest_keeps_two_newest_steps(self):
    self.assertEqual(self._save('latest', [(1, 0.), (2, 0.), (3, 0.)]),
                     [True] * 3)
    self.assertEqual(checkpoint_reading.available_steps(self.workdir, 'latest'),
                     [2, 3])

  def test_best_keeps_higher_val_auroc(self):
    saved = self._save('best', [(1, 0.6), (2, 0.8), (3, 0.7),
                                (4, float('nan')), (5, 0.8)])
    self.assertEqual(saved, [True, True, False, False, False])
    self.assertEqual(checkpoint_reading.available_steps(self.workdir, 'best'),
                     [2])
    restored, meta = checkpoint_reading.restore(self.workdir, self.state,
                                                kind='best')
    self.assertEqual(meta['val_auroc'], 0.8)
    chex.assert_trees_all_close(restored,
                                jax.device_get(_at_step(self.state, 2)))
    # Reopened (as when training resumes), the kept value still counts.
    self.assertEqual(self._save('best', [(6, 0.75), (7, 0.9)]), [False, True])
    self.assertEqual(checkpoint_reading.available_steps(self.workdir, 'best'),
                     [7])

  def test_best_from_an_abandoned_run_is_replaced_by_a_better_earlier_step(
      self):
    self._save('best', [(10, 0.6)])
    # Training resumed from an earlier latest step reaches step 8 again.
    self.assertEqual(self._save('best', [(8, 0.7)]), [True])
    self.assertEqual(checkpoint_reading.available_steps(self.workdir, 'best'),
                     [8])

  def test_restore_and_read_meta_by_kind_and_step(self):
    self._save('latest', [(1, 0.), (2, 0.), (3, 0.)])
    self._save('best', [(2, 0.9)])
    self.assertEqual(checkpoint_reading.read_meta(self.workdir)['step'], 2)
    self.assertEqual(
        checkpoint_reading.read_meta(self.workdir, kind='latest')['step'], 3)
    restored, meta = checkpoint_reading.restore(self.workdir, self.state,
                                                kind='latest', step=2)
    self.assertEqual(meta['step'], 2)
    self.assertEqual(int(restored.step), 2)
    with self.assertRaisesRegex(FileNotFoundError, r'step 1 .*steps \[2, 3\]'):
      checkpoint_reading.read_meta(self.workdir, kind='latest', step=1)
    with self.assertRaisesRegex(ValueError, 'Unknown checkpoint kind'):
      checkpoint_reading.read_meta(self.workdir, kind='final')
    with self.assertRaisesRegex(FileNotFoundError, 'does not exist'):
      checkpoint_reading.read_meta(self.workdir / 'nowhere')

  def test_restore_into_a_different_state_is_a_clear_error(self):
    self._save('latest', [(1, 0.)])
    other = self.state.replace(critic=self.state.critic.replace(
        params={'dense': {'w': jnp.zeros((5, 1))}}))
    with self.assertRaisesRegex(ValueError, 'does not match'):
      checkpoint_reading.restore(self.workdir, other, kind='latest')

  def test_meta_step_must_match_saved_step(self):
    ckpts = checkpointing.CheckpointManagers(self.workdir)
    with self.assertRaisesRegex(ValueError, 'differs'):
      ckpts.save_latest(5, self.state, self._meta(4))
    ckpts.close()

  def test_unfinished_save_is_never_latest_and_is_cleaned_up(self):
    self._save('latest', [(1, 0.)])
    # What a crash mid-save leaves: the step's files under a tmp name.
    tmp = self.workdir / 'checkpoints' / '2.orbax-checkpoint-tmp'
    (tmp / 'state.orbax-checkpoint-tmp').mkdir(parents=True)
    (tmp / 'meta.orbax-checkpoint-tmp' / 'metadata').parent.mkdir()
    (tmp / 'meta.orbax-checkpoint-tmp' / 'metadata').write_text('{"st')
    self.assertEqual(checkpoint_reading.available_steps(self.workdir, 'latest'),
                     [1])
    ckpts = checkpointing.CheckpointManagers(self.workdir)
    self.assertEqual(ckpts.latest_step(), 1)
    restored, meta = ckpts.restore_latest(self.state)
    ckpts.close()
    self.assertEqual(meta['step'], 1)
    chex.assert_trees_all_close(restored,
                                jax.device_get(_at_step(self.state, 1)))
    self.assertFalse(tmp.exists())

  def test_process_killed_mid_save_keeps_last_good_step(self):
    # A child saves step 1, starts saving step 2 (asynchronously) and is
    # SIGKILLed as soon as `save` returns, before the rename that commits it.
    script = textwrap.dedent("""
        import os, signal, sys
        import numpy as np
        from ama_jax.checkpoints import checkpointing
        ckpts = checkpointing.CheckpointManagers(sys.argv[1])
        big = {'w': np.ones((512, 1024), np.float32)}
        ckpts.save_latest(1, big, {'step': 1})
        ckpts.wait_until_finished()
        ckpts.save_latest(2, {'w': big['w'] * 2}, {'step': 2})
        os.kill(os.getpid(), signal.SIGKILL)
        """)
    proc = subprocess.run([sys.executable, '-c', script, str(self.workdir)],
                          cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    self.assertEqual(proc.returncode, -signal.SIGKILL, proc.stderr[-2000:])
    directory = self.workdir / 'checkpoints'
    leftovers = [p for p in directory.iterdir() if 'tmp' in p.name]
    steps = checkpoint_reading.available_steps(self.workdir, 'latest')
    # Either the kill came first (tmp left, step 1 is the latest) or the
    # commit did (step 2 complete); never a half-written step 2.
    self.assertEqual(steps, [1] if leftovers else [1, 2])
    target = {'w': jax.ShapeDtypeStruct((512, 1024), jnp.float32)}
    tree, meta = checkpoint_reading.restore(self.workdir, target,
                                            kind='latest')
    self.assertEqual(meta['step'], steps[-1])
    np.testing.assert_array_equal(tree['w'], float(steps[-1]))
    checkpointing.CheckpointManagers(self.workdir).close()
    self.assertEqual([p for p in directory.iterdir() if 'tmp' in p.name], [])

  def test_to_json_converts_tuples_numpy_and_keeps_non_finite(self):
    out = json_safe.to_json({'a': (1, np.float32(0.5), None),
                             'b': np.arange(2), 'c': -np.inf})
    self.assertEqual(out, {'a': [1, 0.5, None], 'b': [0, 1], 'c': -np.inf})
    with self.assertRaisesRegex(TypeError, r'meta\.x'):
      json_safe.to_json({'x': object()})

  def test_flat_hparams_are_scalars(self):
    hparams = json_safe.flat_hparams(self.config)
    self.assertEqual(hparams['model.width'], 8)
    self.assertEqual(hparams['data.image_size'], 'None')
    self.assertEqual(hparams['optim.decay_at'], '[0.3, 0.6, 0.9]')


def _damage(step_dir: pathlib.Path, how: str) -> None:
  """Damages a saved step the way a crash, a full disk or a user might."""
  data = sorted((step_dir / 'state' / 'ocdbt.process_0' / 'd').iterdir(),
                key=lambda p: -p.stat().st_size)[0]
  if how == 'truncated_data':
    data.write_bytes(data.read_bytes()[:len(data.read_bytes()) // 2])
  elif how == 'flipped_byte':  # Same size, different content.
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
  elif how == 'missing_state_metadata':
    (step_dir / 'state' / '_METADATA').unlink()
  elif how == 'truncated_meta':
    meta = step_dir / 'meta' / 'metadata'
    meta.write_text(meta.read_text()[:10])
  elif how == 'missing_meta':
    shutil.rmtree(step_dir / 'meta')
  elif how == 'bad_step_metadata':
    (step_dir / '_CHECKPOINT_METADATA').write_text('{"item_handlers": ')
  else:
    raise ValueError(how)


_DAMAGE = {  # how -> what step_problem says.
    'truncated_data': r'state/ocdbt\.process_0/d/\w+ has \d+ bytes, \d+ '
                      'were written',
    'flipped_byte': r'state/ocdbt\.process_0/d/\w+ is corrupt',
    'missing_state_metadata': r'state/_METADATA is missing',
    'truncated_meta': r'meta/metadata has 10 bytes',
    'missing_meta': r'meta/metadata is missing',
    'bad_step_metadata': r'_CHECKPOINT_METADATA is not valid JSON',
}


class DamageTest(_StateTest):
  """Damaged checkpoints are named, skipped and kept aside, never read."""

  def setUp(self):
    super().setUp()
    ckpts = checkpointing.CheckpointManagers(self.workdir)
    for step in (1, 2):
      ckpts.save_latest(step, _at_step(self.state, step), {'step': step})
    ckpts.save_best(2, _at_step(self.state, 2), {'step': 2, 'val_auroc': .7})
    ckpts.close()

  def _dir(self, step, kind='checkpoints'):
    return self.workdir / kind / str(step)

  def test_every_step_is_sealed_with_checksums_of_its_files(self):
    for step_dir in (self._dir(1), self._dir(2), self._dir(2, 'best')):
      record = json.loads((step_dir / checkpoint_files.CHECKSUMS).read_text())
      self.assertIn('meta/metadata', record['files'])
      self.assertTrue(any(name.startswith('state/ocdbt.process_0/d/')
                          for name in record['files']))
      self.assertIsNone(checkpoint_files.step_problem(step_dir))

  @parameterized.parameters(*_DAMAGE)
  def test_damage_is_named(self, how):
    _damage(self._dir(2), how)
    self.assertRegex(checkpoint_files.step_problem(self._dir(2)),
                     _DAMAGE[how])
    self.assertIsNone(checkpoint_files.step_problem(self._dir(1)))

  @parameterized.parameters('truncated_data', 'missing_meta',
                            'bad_step_metadata')
  def test_resume_takes_the_newest_readable_step_and_keeps_the_damaged_one(
      self, how):
    _damage(self._dir(2), how)
    with self.assertLogs(level='WARNING') as logs:
      with checkpointing.CheckpointManagers(self.workdir) as ckpts:
        restored, meta = ckpts.restore_latest(self.state)
        self.assertEqual(meta['step'], 1)
        chex.assert_trees_all_close(restored,
                                    jax.device_get(_at_step(self.state, 1)))
        # Training goes on: step 2 is written again beside the damaged one.
        self.assertTrue(ckpts.save_latest(2, _at_step(self.state, 2),
                                          {'step': 2}))
    text = '\n'.join(logs.output)
    self.assertRegex(text, r'step 2 in .*checkpoints/2 is damaged')
    self.assertRegex(text, r'Resuming from step 1, .*2\.damaged')
    self.assertTrue((self.workdir / 'checkpoints' / '2.damaged').is_dir())
    self.assertEqual(checkpoint_reading.available_steps(self.workdir, 'latest'),
                     [1, 2])
    self.assertIsNone(checkpoint_files.step_problem(self._dir(2)))

  def test_no_readable_step_raises_naming_each_and_moves_nothing(self):
    _damage(self._dir(1), 'missing_state_metadata')
    _damage(self._dir(2), 'truncated_data')
    pattern = (r'No readable checkpoint in .*checkpoints: step 2 \(.*/2\): '
               r'.* step 1 \(.*/1\): state/_METADATA is missing\. Nothing was '
               r'moved')
    with self.assertRaisesRegex(errors.CheckpointDamagedError, pattern):
      checkpoint_files.check_resumable(self.workdir)
    with checkpointing.CheckpointManagers(self.workdir) as ckpts:
      with self.assertRaisesRegex(errors.CheckpointDamagedError, pattern):
        ckpts.restore_latest(self.state)
    self.assertEqual(sorted(p.name for p in
                            (self.workdir / 'checkpoints').iterdir()),
                     ['1', '2'])

  def test_unsealed_step_is_checked_by_reading_its_data(self):
    # As saved by an older ama_jax: no checksums; its data is read back.
    (self._dir(2) / checkpoint_files.CHECKSUMS).unlink()
    self.assertIsNone(checkpoint_files.step_problem(self._dir(2)))
    for data in (self._dir(2) / 'state').rglob('d/*'):
      data.write_bytes(data.read_bytes()[:10])
    self.assertRegex(checkpoint_files.step_problem(self._dir(2)),
                     r'state/ data is unreadable \(OUT_OF_RANGE')
    with checkpointing.CheckpointManagers(self.workdir) as ckpts:
      _, meta = ckpts.restore_latest(self.state)
    self.assertEqual(meta['step'], 1)
    self.assertTrue((self.workdir / 'checkpoints' / '2.damaged').is_dir())

  def test_readers_skip_a_damaged_latest_and_refuse_a_damaged_step(self):
    _damage(self._dir(2), 'flipped_byte')
    with self.assertLogs(level='WARNING') as logs:
      meta = checkpoint_reading.read_meta(self.workdir, kind='latest')
    self.assertEqual(meta['step'], 1)
    self.assertRegex(logs.output[0], r'step 2 .* is corrupt.*using step 1')
    with self.assertRaisesRegex(errors.CheckpointDamagedError,
                                r'step 2 in .*checkpoints/2 is damaged'):
      checkpoint_reading.restore(self.workdir, self.state, kind='latest',
                                 step=2)
    restored, _ = checkpoint_reading.restore(self.workdir, self.state,
                                             kind='latest')
    self.assertEqual(int(restored.step), 1)
    self.assertTrue(self._dir(2).is_dir())  # Readers change nothing.

  def test_damaged_best_is_refused_then_set_aside_by_training(self):
    _damage(self._dir(2, 'best'), 'truncated_meta')
    with self.assertRaisesRegex(errors.CheckpointDamagedError,
                                r'No readable checkpoint in .*best: step 2'):
      checkpoint_reading.read_meta(self.workdir, kind='best')
    with self.assertLogs(level='WARNING') as logs:
      with checkpointing.CheckpointManagers(self.workdir) as ckpts:
        self.assertIsNone(ckpts.best_step())
        self.assertIsNone(ckpts.restore_best(self.state))
        self.assertTrue(ckpts.save_best(3, _at_step(self.state, 3),
                                        {'step': 3, 'val_auroc': 0.6}))
    self.assertRegex(logs.output[0], r'Best checkpoint step 2 .* damaged .* '
                     r'moved to 2\.damaged')
    self.assertEqual(checkpoint_reading.available_steps(self.workdir, 'best'),
                     [3])

  def test_best_replaced_by_an_earlier_step_survives_a_kill_in_between(self):
    # save_best(1) after a kept best at step 2 sets step 2 aside first. A
    # kill before step 1 is committed leaves only the aside copy:
    best = self.workdir / 'best'
    os.replace(best / '2', best / '2.superseded')
    with checkpointing.CheckpointManagers(self.workdir) as ckpts:
      self.assertEqual(ckpts.best_step(), 2)  # Put back.
      self.assertTrue(ckpts.save_best(1, _at_step(self.state, 1),
                                      {'step': 1, 'val_auroc': 0.9}))
    self.assertEqual(sorted(p.name for p in best.iterdir()), ['1'])
    _, meta = checkpoint_reading.restore(self.workdir, self.state, kind='best')
    self.assertEqual((meta['step'], meta['val_auroc']), (1, 0.9))

  def test_kill_while_a_step_is_being_committed_keeps_the_previous_one(self):
    # The child dies after step 3's files are written, before orbax renames
    # its tmp directory (in the on-commit callback that seals it).
    script = textwrap.dedent("""
        import os, signal, sys
        import numpy as np
        from ama_jax.checkpoints import checkpoint_files
        from ama_jax.checkpoints import checkpointing
        checkpoint_files.seal = lambda step_dir: os.kill(os.getpid(),
                                                         signal.SIGKILL)
        ckpts = checkpointing.CheckpointManagers(sys.argv[1])
        ckpts.save_latest(3, {'w': np.ones(4)}, {'step': 3})
        ckpts.wait_until_finished()
        """)
    workdir = pathlib.Path(self.create_tempdir().full_path)
    ckpts = checkpointing.CheckpointManagers(workdir)
    ckpts.save_latest(2, {'w': np.zeros(4)}, {'step': 2})
    ckpts.close()
    proc = subprocess.run([sys.executable, '-c', script, str(workdir)],
                          cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    self.assertEqual(proc.returncode, -signal.SIGKILL, proc.stderr[-2000:])
    self.assertTrue(list((workdir / 'checkpoints').glob('3.orbax-*')))
    self.assertEqual(checkpoint_reading.available_steps(workdir, 'latest'), [2])
    with checkpointing.CheckpointManagers(workdir) as ckpts:
      tree, meta = ckpts.restore_latest({'w': np.ones(4)})
    self.assertEqual(meta['step'], 2)
    np.testing.assert_array_equal(tree['w'], 0.0)
    self.assertFalse(list((workdir / 'checkpoints').glob('3.orbax-*')))


if __name__ == '__main__':
  absltest.main()
