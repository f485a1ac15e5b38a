"""Tests of the up-front config validation (`ama_jax.config.config_checks`)."""
import importlib
import pathlib

from absl.testing import absltest
from absl.testing import parameterized
import ml_collections

from ama_jax.config import config_checks
from ama_jax.config import rules
from ama_jax import errors
from ama_jax.training import schedules
from configs import default

_CONFIG_DIR = pathlib.Path(default.__file__).parent
# Every config file with the `:arg` variants its docstring documents.
_VARIANTS = {
    'default': (None, 'runlocal', 'quick'),
    'fmnist_mnist': (None, 'runlocal'),
    'mnist_oneclass': ('3', '3,runlocal', '3+5'),
    'fmnist_oneclass': ('trouser', '0,runlocal'),
    'cifar_svhn': (None, 'runlocal'),
    'cifar_oneclass': ('ship', 'ship,runlocal'),
    'folder': (None, '3,runlocal', 'cat+dog,cifar', 'cifar,runlocal'),
}


def _configs():
  for name, args in _VARIANTS.items():
    module = importlib.import_module(f'configs.{name}')
    for arg in args:
      yield f'{name}:{arg}', module.get_config(arg)


def _runlocal(**overrides):
  """The runlocal default config with dotted-path overrides of any type.

  Not type-safe, as a config rebuilt from JSON (`config_from_dict`) is: the
  rules must catch a value of the wrong type too.
  """
  config = ml_collections.ConfigDict(
      default.get_config('runlocal').to_dict(), type_safe=False)
  for path, value in overrides.items():
    *parents, leaf = path.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _problems(config, num_devices=2):
  return config_checks.problems(
      config, rules.Context(num_devices=num_devices))


class CoverageTest(absltest.TestCase):

  def test_every_config_file_is_listed_here(self):
    files = {p.stem for p in _CONFIG_DIR.glob('*.py') if p.stem != '__init__'}
    self.assertEqual(files, set(_VARIANTS))

  def test_every_field_of_every_config_has_a_rule(self):
    # A field added to configs/*.py needs a rule in the FIELDS of the
    # config_rules.py of the room that reads it.
    for name, config in _configs():
      with self.subTest(config=name):
        self.assertEqual(config_checks.fields_without_rules(config), [],
                         'add a rule to the FIELDS of ama_jax/<room>/'
                         'config_rules.py, the room that reads the field')

  def test_every_rule_names_a_field(self):
    stale = config_checks.rules_without_fields(default.get_config())
    self.assertEqual(stale, [], 'rules for fields that no longer exist')

  def test_every_shipped_config_is_valid(self):
    for name, config in _configs():
      with self.subTest(config=name):
        self.assertEqual(_problems(config), [])
        config_checks.validate(config, num_devices=2)


class FieldRulesTest(parameterized.TestCase):

  @parameterized.parameters(
      # (field, bad value, what the message says is allowed)
      ('seed', -1, r'integer in \[0, 4294967295\]'),
      ('seed', 2**32, r'integer in \[0, 4294967295\]'),
      ('data.dataset', '', r"built-in dataset \('mnist', 'fashion_mnist'"),
      ('data.dataset', '/no/such/folder', r'no such folder, and not a TFDS '
       r"name; must be a built-in dataset .*'folder:PATH', "
       r"'array:X\.npy\[,labels=Y\.npy\]'"),
      ('data.dataset', 'no such.npz', r'no such file no such\.npz'),
      ('data.dataset', 'folder:', 'folder: needs a path after it'),
      ('data.dataset', 'tfds: ', 'tfds: needs a name after it'),
      ('data.dataset', 3, 'must be a built-in dataset'),
      ('data.ood_dataset', 'mnist digits', 'not a TFDS name'),
      ('data.protocol', 'two_class', r"one of 'one_class', 'ood'"),
      ('data.normal_classes', (), 'non-empty tuple of class indices'),
      ('data.num_val_normal', 0, r'integer >= 1'),
      ('data.num_val_anomaly', -3, r'integer >= 1'),
      ('data.semi_supervised_ratio', 1.0, r'finite number in \[0, 1\)'),
      ('data.corruption_ratio', float('nan'), r'finite number in \[0, 1\)'),
      ('data.num_test_anomaly', -1, r'integer >= 0 or None'),
      ('data.image_size', 0, r'integer >= 1 or None'),
      ('data.image_size', 28.0, r'integer >= 1 or None'),
      ('data.channels', 2, r'one of 1, 3 or None'),
      ('data.channels', True, r'one of 1, 3 or None'),
      ('data.resize', 'bicubic', r"one of 'bilinear', 'nearest', 'crop', "
       r"'pad'"),
      ('data.test_fraction', 0.0, r'finite number in \(0, 1\)'),
      ('data.test_fraction', 1.0, r'finite number in \(0, 1\)'),
      ('data.download', 'no', 'True or False'),
      ('data.data_dir', '', 'non-empty string or None'),
      ('data.max_train', 0, r'integer >= 1 or None'),
      ('data.max_test', 1, r'integer >= 2 or None'),
      ('model.arch', 'vgg', r"one of 'cifar', 'mnist'"),
      ('model.latent_dim', 0, r'integer >= 1'),
      ('model.width', 2.5, r'integer >= 1'),
      ('model.spectral_norm', 'yes', 'True or False'),
      ('loss.lambda_inter', -0.5, r'finite number >= 0'),
      ('loss.num_inter', 1, r'integer >= 2'),
      ('loss.lambda_gp', float('inf'), r'finite number >= 0'),
      ('loss.gp_style', 'per_batch', r"one of 'per_pixel', 'per_sample'"),
      ('loss.detach_inter', 1, 'True or False'),
      ('loss.gp_inter', 'no', 'True or False'),
      ('sampling.style', 'sideways', r"one of 'inward', 'outward', 'radial'"),
      ('sampling.radial_direction', 'up', r"one of 'inward', 'outward'"),
      ('sampling.turns', 'half', r"one of 'all', 'quarter'"),
      ('sampling.delta', 0.0, r'finite number > 0'),
      ('sampling.start_epoch', -1, r'integer >= 0'),
      ('sampling.fraction', 1.0, r'finite number in \[0, 1\)'),
      ('sampling.shell_radius', 'mean', r"one of 'sqrt_d', 'measured'"),
      ('sampling.radius_quantile', 1.5, r'finite number in \[0, 1\]'),
      ('sampling.start_step', -1, r'integer >= 0 or None'),
      ('sampling.ramp_fraction', 1.5, r'\[0, 1\]'),
      ('sampling.start_fraction', 1.0, r'\[0, 1\)'),
      ('optim.lr', 0.0, r'finite number > 0'),
      ('optim.lr', float('nan'), r'finite number > 0'),
      ('optim.b1_encoder', 1.0, r'finite number in \[0, 1\)'),
      ('optim.b2', -0.1, r'finite number in \[0, 1\)'),
      ('optim.decay_at', (0.6, 0.3), 'increasing fractions in'),
      ('optim.decay_at', (0.5, 1.5), 'increasing fractions in'),
      ('optim.decay', 0.0, r'finite number in \(0, 1\]'),
      ('optim.schedule', 'linear', r"one of 'step', 'constant', 'cosine'"),
      ('optim.decay_at_epochs', (60, 30), 'increasing epochs > 0'),
      ('optim.warmup_steps', -1, r'integer >= 0'),
      ('optim.final_lr_fraction', 2.0, r'finite number in \[0, 1\]'),
      ('optim.ema_decay', 1.0, r'finite number in \[0, 1\)'),
      ('train.batch_size', -1, r'integer >= 1'),
      ('train.num_epochs', 0, r'integer >= 1'),
      ('train.n_critic', 0, r'integer >= 1'),
      ('train.steps_per_call', 0, r'integer >= 1'),
      ('train.halt_after_steps', 0, r'integer >= 1 or None'),
      ('train.max_steps_per_epoch', 0, r'integer >= 1 or None'),
      ('eval.batch_size', 0, r'integer >= 1'),
      ('eval.first_epoch', 0, r'integer >= 1'),
      ('eval.every_epochs', 0, r'integer >= 1'),
      ('eval.threshold_fpr', 1.5, r'finite number in \[0, 1\)'),
      ('eval.calibration_size', 1, r'integer >= 2 or None'),
      ('eval.score', 'three_sided', r"one of 'two_sided', 'one_sided', "
       "'auto'"),
      ('log.every_steps', 0, r'integer >= 1'),
      ('log.checkpoint_every_steps', -5, r'integer >= 1'),
      ('log.figures', None, r'must be set \(is None\)'),
  )
  def test_bad_value_names_field_value_and_what_is_allowed(
      self, field, value, allowed):
    with self.assertRaises(errors.ConfigError) as raised:
      config_checks.validate(_runlocal(**{field: value}), num_devices=2)
    message = str(raised.exception)
    self.assertIn(f'{field}={value!r}', message)
    self.assertRegex(message, allowed)
    self.assertIsInstance(raised.exception, ValueError)  # Old callers.

  def test_every_problem_is_listed_in_one_error(self):
    config = _runlocal(**{'data.protocol': 'x', 'model.width': 0,
                          'loss.lambda_neg': -1.0, 'optim.lr': -1.0,
                          'train.batch_size': 0, 'log.every_steps': 0})
    with self.assertRaisesRegex(errors.ConfigError,
                                r'^Invalid config \(6 problems\)') as raised:
      config_checks.validate(config, num_devices=2)
    for field in ('data.protocol', 'model.width', 'loss.lambda_neg',
                  'optim.lr', 'train.batch_size', 'log.every_steps'):
      self.assertIn(field, str(raised.exception))
    self.assertNotIn('\n', str(raised.exception))

  def test_placeholders_accept_none_and_a_value(self):
    for field, value in (('data.max_train', 50), ('data.image_size', None),
                         ('data.image_size', 28), ('data.channels', 3),
                         ('data.num_test_anomaly', None),
                         ('train.halt_after_steps', 3),
                         ('eval.calibration_size', None),
                         ('data.raw_dir', '/data/raw')):
      with self.subTest(field=field):
        self.assertEqual(_problems(_runlocal(**{field: value})), [])


class DatasetsTest(absltest.TestCase):
  """data.dataset / data.ood_dataset take every form the pipeline reads."""

  def test_every_dataset_form_is_accepted(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    (root / 'images').mkdir()
    (root / 'x.npy').write_bytes(b'')
    (root / 'd.npz').write_bytes(b'')
    for spec in ('mnist', 'svhn_cropped', 'folder:/not/yet/there',
                 'array:/a/x.npy,labels=/a/y.npy', 'array:/a/d.npz',
                 'tfds:huggingface:mnist', 'cats_vs_dogs', 'cifar10_corrupted/'
                 'gaussian_noise_1', 'mnist:3.*.*', str(root / 'images'),
                 str(root / 'x.npy'), f'{root / "x.npy"},labels=y.npy',
                 str(root / 'd.npz')):
      for field in ('data.dataset', 'data.ood_dataset'):
        with self.subTest(spec=spec, field=field):
          self.assertIsNone(config_checks.field_rule(field).problem(spec))

  def test_classes_and_shapes_of_other_datasets_are_left_to_the_pipeline(
      self):
    # Unknown class names and the images' shapes are only known once the
    # folder is read: the config checks must not guess.
    self.assertEqual(_problems(_runlocal(**{
        'data.protocol': 'one_class', 'data.dataset': 'folder:/imgs',
        'data.normal_classes': ('cat',), 'model.arch': 'cifar'})), [])
    self.assertEqual(_problems(_runlocal(**{
        'data.dataset': 'folder:/normal', 'data.ood_dataset': 'cifar10',
        'data.num_test_anomaly': None})), [])
    # A built-in's classes are still checked.
    self.assertLen(_problems(_runlocal(**{
        'data.protocol': 'one_class', 'data.normal_classes': ('cat',)})), 1)


class CombinationsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('batch_vs_devices', {'train.batch_size': 18}, 4,
       r'batch_size=18 .* 4 devices .* e\.g\. 16 or 20'),
      ('epochs_vs_start_of_negatives', {'train.num_epochs': 1}, 2,
       r'sampling\.start_epoch=1 with train\.num_epochs=1: .* never run'),
      ('no_negatives_drawn', {'sampling.fraction': 0.0}, 2,
       r"sampling\.fraction=0 with sampling\.style='outward'"),
      ('shell_below_origin', {'sampling.style': 'inward',
                              'sampling.delta': 3.0}, 2,
       r'delta <= sqrt\(8\)'),
      ('batch_above_capped_train_set', {'data.max_train': 10}, 2,
       r'batch_size=16 is larger than the training set'),
      ('arch_vs_images', {'model.arch': 'cifar'}, 2,
       r"model\.arch='cifar' takes 32x32 images but fashion_mnist images "
       r'are 28x28; set data\.image_size=32 to convert them or '
       r"model\.arch='mnist'"),
      ('arch_vs_image_size', {'data.image_size': 32}, 2,
       r"data\.image_size=32 but model\.arch='mnist' takes 28x28 images; "
       r"set data\.image_size=28 or model\.arch='cifar'"),
      ('arch_vs_image_size_of_a_folder', {'data.image_size': 64,
                                          'data.dataset': 'folder:/x'}, 2,
       r'data\.image_size=64 but .* set data\.image_size=28\.$'),
      ('datasets_of_different_sizes', {'data.ood_dataset': 'cifar10'}, 2,
       r'data\.image_size=None but fashion_mnist images are 28x28 and '
       r'cifar10 images are 32x32; set data\.image_size=28'),
      ('datasets_of_different_channels', {'data.ood_dataset': 'cifar10',
                                          'data.image_size': 28}, 2,
       r'data\.channels=None but fashion_mnist images have 1 channel and '
       r'cifar10 images have 3 channels; set data\.channels=1'),
      ('ood_needs_another_dataset', {'data.ood_dataset': 'fashion_mnist'}, 2,
       r"data\.ood_dataset='fashion_mnist': the ood protocol needs"),
      ('ood_needs_test_anomalies', {'data.num_test_anomaly': 0}, 2,
       r'needs >= 1 test anomaly'),
      ('one_class_unknown_class', {'data.protocol': 'one_class',
                                   'data.normal_classes': ('cat',)}, 2,
       r"Unknown class 'cat' of fashion_mnist"),
      ('one_class_all_classes', {'data.protocol': 'one_class',
                                 'data.normal_classes': tuple(range(10))}, 2,
       r'names all 10 classes'),
      ('no_validation', {'eval.first_epoch': 3}, 2,
       r'no epoch would be validated'),
      ('no_validation_every', {'eval.every_epochs': 3}, 2,
       r'no epoch would be validated'),
      ('decay_epochs_after_the_end', {'optim.schedule': 'step',
                                      'optim.decay_at_epochs': (1, 2)}, 2,
       r'decay point\(s\) \[2\] fall at or after the end'),
  )
  def test_combination_is_an_error(self, overrides, devices, message):
    with self.assertRaisesRegex(errors.ConfigError, message):
      config_checks.validate(_runlocal(**overrides), num_devices=devices)

  def test_combination_of_a_bad_field_is_not_checked_twice(self):
    found = _problems(_runlocal(**{'sampling.style': 'x',
                                   'sampling.start_epoch': 5}))
    self.assertLen(found, 1)
    self.assertIn("sampling.style='x'", found[0])

  def test_a_start_given_on_the_command_line_is_the_one_used(self):
    tuned = default.get_config()  # Its start: 2/3 of the run.
    self.assertEqual(config_checks.apply_start_given(tuned, ['seed']), [])
    self.assertEqual(tuned.sampling.start_fraction, default.TUNED_START_FRACTION)
    tuned.sampling.start_epoch = 5
    self.assertEqual(
        config_checks.apply_start_given(tuned, ['sampling.start_epoch']),
        [f'sampling.start_fraction={2 / 3!r}',
         'sampling.earliest_start_epoch=2'])
    self.assertIsNone(tuned.sampling.start_fraction)
    self.assertEqual(schedules.negatives_start_step(tuned, 10), 50)
    # Its floor stays when given with it: epoch 1, but not before epoch 2.
    tuned = default.get_config()
    tuned.sampling.start_epoch = 1
    config_checks.apply_start_given(
        tuned, ['sampling.start_epoch', 'sampling.earliest_start_epoch'])
    self.assertEqual(schedules.negatives_start_step(tuned, 10), 20)
    # A fraction given with the paper's recipe: its start_epoch is below it.
    paper = default.get_config('paper')
    paper.sampling.start_fraction = 0.5
    self.assertEqual(
        config_checks.apply_start_given(paper, ['sampling.start_fraction']),
        [])
    self.assertEqual(schedules.negatives_start_step(paper, 10), 500)
    # A step takes precedence anyway; two starts at once are an error.
    tuned = default.get_config()
    tuned.sampling.start_step = 7
    self.assertEqual(
        config_checks.apply_start_given(tuned, ['sampling.start_step']),
        ['sampling.earliest_start_epoch=2'])
    self.assertEqual(schedules.negatives_start_step(tuned, 10), 7)
    with self.assertRaisesRegex(errors.ConfigError,
                                'start_fraction and sampling.start_epoch are '
                                'both set'):
      config_checks.apply_start_given(
          tuned, ['sampling.start_epoch', 'sampling.start_fraction'])

  def test_resume_ignores_the_negatives_settings_of_runs_without_them(self):
    # A tuned run stored before its recipe had negatives (style 'none',
    # start_fraction None) resumes with `--config.sampling.style=none`,
    # whatever the start fields now say; the style itself still counts.
    from ama_jax.reporting import json_safe  # pylint: disable=g-import-not-at-top
    stored = json_safe.config_to_dict(default.get_config())
    stored['sampling'].update(style='none', start_fraction=None)
    config = default.get_config()
    config.sampling.style = 'none'
    config_checks.check_resume(stored, config, 'w', 3)
    with self.assertRaisesRegex(errors.ConfigError,
                                "sampling.style: 'none' there, 'outward'"):
      config_checks.check_resume(stored, default.get_config(), 'w', 3)

  def test_start_step_replaces_the_start_epoch_check(self):
    config = _runlocal(**{'train.num_epochs': 1, 'sampling.start_step': 2,
                          'optim.decay_at': (0.5,)})
    self.assertEqual(_problems(config), [])
    config_checks.check_plan(config, steps_per_epoch=4)
    with self.assertRaisesRegex(errors.ConfigError,
                                r'sampling\.start_step=2: atypical selection '
                                'would never run in 2 training steps'):
      config_checks.check_plan(_runlocal(**{'sampling.start_step': 2,
                                            'optim.decay_at': ()}), 1)

  def test_knn_k_must_not_exceed_the_training_normals(self):
    config = _runlocal(**{'eval.knn_k': 5})
    config_checks.check_plan(config, 4, num_train_normals=5)
    with self.assertRaisesRegex(errors.ConfigError,
                                r'eval\.knn_k=5 exceeds the 4 training '
                                r'normals .* \(0 turns the score off\)'):
      config_checks.check_plan(config, 4, num_train_normals=4)
    self.assertNotEqual(_problems(_runlocal(**{'eval.knn_k': -1})), [])
    config_checks.check_plan(_runlocal(**{'eval.knn_k': 0}), 4,
                             num_train_normals=0)

  def test_style_none_needs_no_negatives_schedule(self):
    self.assertEqual(_problems(_runlocal(**{
        'sampling.style': 'none', 'train.num_epochs': 1,
        'sampling.fraction': 0.0})), [])

  def test_schedule_points_must_fall_on_distinct_steps(self):
    config = _runlocal(**{'optim.schedule': 'step'})
    config_checks.check_plan(config, steps_per_epoch=4)  # Steps 2, 5, 7.
    with self.assertRaisesRegex(
        errors.ConfigError, r'decays at steps \[1, 1, 2\] of 2 training '
        r'steps .* same step'):
      config_checks.check_plan(config, steps_per_epoch=1)
    with self.assertRaisesRegex(errors.ConfigError, 'at or after the end'):
      config_checks.check_plan(_runlocal(**{'optim.schedule': 'step',
                                            'optim.decay_at': (0.99,)}),
                               steps_per_epoch=4)
    config_checks.check_plan(_runlocal(**{'optim.decay_at': ()}), 1)
    config_checks.check_plan(_runlocal(**{'optim.schedule': 'constant'}), 1)
    with self.assertRaisesRegex(errors.ConfigError,
                                r'optim\.decay_at_epochs=\(1, 1\.1\) puts '
                                r'the lr decays at steps \[4, 4\]'):
      config_checks.check_plan(
          _runlocal(**{'optim.schedule': 'step',
                       'optim.decay_at_epochs': (1, 1.1),
                       'train.num_epochs': 2}), steps_per_epoch=4)
    with self.assertRaisesRegex(errors.ConfigError,
                                r'optim\.warmup_steps=8 is not shorter'):
      config_checks.check_plan(_runlocal(**{'optim.warmup_steps': 8}), 4)


if __name__ == '__main__':
  absltest.main()
