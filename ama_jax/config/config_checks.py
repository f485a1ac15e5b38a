"""Validation of a whole experiment config before any work is done.

`validate(config, num_devices=..., num_processes=...)` runs when training
starts, before data loading and compilation, and raises one
`errors.ConfigError` that lists every problem: the field, its value and
what is allowed, e.g.

  Invalid config (2 problems): train.batch_size=-4: must be an integer >= 1;
  sampling.style='sideways': must be one of 'inward', 'outward', 'radial',
  'cube', 'rotate', 'none'.

The rules are declared next to the code that reads the fields, in each
room's `config_rules.py` (`ama_jax/data/`, `models/`, `training/`,
`scoring/`, `reporting/`), with the rule kinds of `ama_jax.config.rules`.
Two tables, one entry per rule, gathered here from the rooms:

- `FIELDS`: dotted field path -> `Rule`, one per field of
  `configs/default.py` (type, range, enumeration; placeholders may be None
  only where the rule says `optional=True`). `tests/config_checks_test.py`
  fails when a field has no rule, so a new field needs one in the
  `config_rules.py` of the room that reads it:

    'train.warmup_steps': rules.Int(min=0),
    'data.folder': rules.Text(optional=True),

- `COMBINATIONS`: functions `(config, context) -> [problem, ...]` for rules
  that involve several fields or the devices (batch versus device count,
  epochs versus the schedule, ...). Each runs only if the fields it reads
  passed their own rules (`Combination.fields`).

`check_plan(config, steps_per_epoch)` checks what depends on the data size
(known after loading, before compilation): the lr schedule's decay points.
`check_resume(stored, config, ...)` refuses to resume a workdir whose
checkpoint was trained with another config (`RESUME_MAY_CHANGE` lists the
fields that may differ); `config_differences` lists the differing fields
(also for `ama_jax.tools.reproduce`'s stored results).
"""
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import ml_collections

from ama_jax import errors
from ama_jax.config import rules
from ama_jax.data import config_rules as data_rules
from ama_jax.models import config_rules as model_rules
from ama_jax.reporting import config_rules as reporting_rules
from ama_jax.reporting import json_safe
from ama_jax.scoring import config_rules as scoring_rules
from ama_jax.training import config_rules as training_rules
from ama_jax.training import schedules

# The rooms' rules, in the order of their messages.
_ROOMS = (data_rules, model_rules, training_rules, scoring_rules,
          reporting_rules)
FIELDS: dict[str, rules.Rule] = {
    path: rule for room in _ROOMS for path, rule in room.FIELDS.items()}
COMBINATIONS: tuple[rules.Combination, ...] = tuple(
    c for room in _ROOMS for c in room.COMBINATIONS)


def problems(config: ml_collections.ConfigDict,
             context: rules.Context = rules.Context()) -> list[str]:
  """Every problem of `config`, field rules first ([] if none)."""
  return rules.find_problems(config, context, FIELDS, COMBINATIONS)


def validate(config: ml_collections.ConfigDict, *, num_devices: int = 1,
             num_processes: int = 1) -> None:
  """Raises ConfigError listing every problem of `config` (see docstring).

  Args:
    config: the experiment config (`configs/*.py`).
    num_devices: devices of all processes (the global batch is split over
      them).
    num_processes: processes (for messages).
  """
  found = problems(config, rules.Context(num_devices=num_devices,
                                         num_processes=num_processes))
  if found:
    what = (f'{len(found)} problems' if len(found) > 1 else '1 problem')
    raise errors.ConfigError(f'Invalid config ({what}): ' + '; '.join(found)
                             + '.')


def check_plan(config: ml_collections.ConfigDict, steps_per_epoch: int,
               num_train_normals: Optional[int] = None) -> None:
  """Checks the schedules against the training length and the feature kNN
  score's k against the training normals (after loading).

  Raises:
    ConfigError: two lr decay points fall on the same step or one at or
      after the last step, the warm-up outlasts training, or
      `sampling.start_step` comes after the last step (the schedule would
      not be the one configured), or `eval.knn_k` exceeds the training
      normals (the final evaluation would fail).
  """
  total = steps_per_epoch * config.train.num_epochs
  length = (f'{total} training steps ({steps_per_epoch} per epoch x '
            f'train.num_epochs={config.train.num_epochs})')
  found = []
  at = schedules.decay_boundaries(config, steps_per_epoch, total)
  if len(set(at)) < len(at) or any(s >= total for s in at):
    field = ('optim.decay_at_epochs' if config.optim.get('decay_at_epochs')
             is not None else 'optim.decay_at')
    found.append(
        f'{field}={tuple(config.optim[field.split(".")[1]])} puts the lr '
        f'decays at steps {at} of {length}: '
        + ('two fall on the same step' if len(set(at)) < len(at) else
           'one falls at or after the end')
        + "; train longer or give fewer points (optim.schedule='constant' "
        'for a constant lr)')
  warmup = config.optim.get('warmup_steps') or 0
  if warmup >= total:
    found.append(f'optim.warmup_steps={warmup} is not shorter than the '
                 f'{length}')
  start = schedules.negatives_start_step(config, steps_per_epoch)
  given = config.sampling.get('start_step')
  if given is not None and given >= total:
    found.append(f'sampling.start_step={given}: atypical selection would '
                 f'never run in {length}')
  elif (config.sampling.style != 'none' and start >= total
        and config.sampling.get('earliest_start_epoch') is not None):
    logging.info('No synthetic negatives in this run of %d epochs: '
                 'sampling.earliest_start_epoch=%d (the tuned recipe starts '
                 'them after that many epochs, in the run\'s last third).',
                 config.train.num_epochs,
                 config.sampling.earliest_start_epoch)
  k = config.eval.get('knn_k') or 0
  if num_train_normals is not None and k > num_train_normals:
    found.append(f'eval.knn_k={k} exceeds the {num_train_normals} training '
                 'normals the feature kNN score compares with; lower it '
                 '(0 turns the score off)')
  bank = config.eval.get('knn_bank_size')
  if bank and k > bank:
    found.append(f'eval.knn_k={k} exceeds eval.knn_bank_size={bank}, the '
                 'training features the feature kNN score compares with; '
                 'raise the bank or lower k')
  if found:
    raise errors.ConfigError('; '.join(found) + '.')


# Fields a resumed run may set differently from the run it continues: none
# of them changes the training (when to halt, steps fused per call, what is
# evaluated and logged, where the data files are read from).
RESUME_MAY_CHANGE = ('train.halt_after_steps', 'train.time_limit_s',
                     'train.steps_per_call',
                     'train.allow_resume_changes',
                     'eval.', 'log.', 'data.data_dir', 'data.raw_dir',
                     'data.download')


def config_differences(stored: Mapping[str, Any],
                       config: ml_collections.ConfigDict
                       ) -> list[tuple[str, Any, Any]]:
  """(dotted path, stored value, `config`'s value) of every field whose value
  differs between a stored (JSON) config and `config`, sorted by path. A
  field only one side has (stored before the field existed) is not
  compared."""
  old = dict(rules.leaf_fields(stored))
  new = dict(rules.leaf_fields(json_safe.config_to_dict(config)))
  return [(path, old[path], new[path])
          for path in sorted(old.keys() & new.keys())
          if old[path] != new[path]]


# Where atypical selection starts, by precedence (schedules.py).
START_FIELDS = ('sampling.start_step', 'sampling.start_fraction',
                'sampling.start_epoch')


def apply_start_given(config: ml_collections.ConfigDict,
                      given: Sequence[str]) -> list[str]:
  """Makes the start of negatives set on the command line the one used.

  A config file sets one start (the tuned recipe `sampling.start_fraction`,
  the paper's `sampling.start_epoch`), and `START_FIELDS` take precedence in
  their order; the command line cannot set a field back to None. So when
  `given` (the dotted fields set on the command line, or by `reproduce`)
  holds one start field, the config file's start fields that would take
  precedence over it are cleared, and its `sampling.earliest_start_epoch`
  unless that is given too: `--config.sampling.start_epoch=5` starts at
  epoch 5 with either recipe.

  Returns:
    The cleared fields with their former values (`path=value`), for the log.

  Raises:
    ConfigError: more than one start field given.
  """
  starts = [f for f in START_FIELDS if f in given]
  if len(starts) > 1:
    raise errors.ConfigError(
        f'{" and ".join(starts)} are both set: give one start of atypical '
        f'selection (precedence {" > ".join(START_FIELDS)}).')
  if not starts:
    return []
  cleared = []
  above = START_FIELDS[:START_FIELDS.index(starts[0])]
  if 'sampling.earliest_start_epoch' not in given:
    above += ('sampling.earliest_start_epoch',)  # The file's floor too.
  for path in above:
    leaf = path.split('.')[1]
    if config.sampling.get(leaf) is not None:
      cleared.append(f'{path}={config.sampling[leaf]!r}')
      config.sampling[leaf] = None
  return cleared


def _inert(path: str, stored: Mapping[str, Any],
           config: ml_collections.ConfigDict) -> bool:
  """Whether a field cannot change the training: the atypical-selection
  settings (other than the style) when both runs have none."""
  return (path.startswith('sampling.') and path != 'sampling.style'
          and stored.get('sampling', {}).get('style') == 'none'
          and config.sampling.style == 'none')


def check_resume(stored: Mapping[str, Any], config: ml_collections.ConfigDict,
                 workdir: Any, step: int) -> None:
  """Checks that the run resumed in `workdir` is the one `config` describes.

  Args:
    stored: the config saved with the checkpoint resumed (`meta['config']`).
    config: the config of the command resuming it.
    workdir: the run's directory (for the message).
    step: the step resumed from (for the message).

  Raises:
    ConfigError: a field outside `RESUME_MAY_CHANGE` differs (a different
      seed, model, loss, schedule, data split or length would silently mix
      two trainings in one run), unless `train.allow_resume_changes`, which
      logs the differences instead. Fields only one side has (a checkpoint
      written before the field existed) are not compared, nor the
      atypical-selection settings of two runs without it.
  """
  changed = [d for d in config_differences(stored, config)
             if not d[0].startswith(RESUME_MAY_CHANGE)
             and not _inert(d[0], stored, config)]
  if not changed:
    return
  shown = '; '.join(f'{path}: {was!r} there, {now!r} now'
                    for path, was, now in changed[:8])
  more = f' (and {len(changed) - 8} more)' if len(changed) > 8 else ''
  if config.train.get('allow_resume_changes'):
    logging.warning('Resuming %s from step %d with a changed config '
                    '(train.allow_resume_changes): %s%s.', workdir, step,
                    shown, more)
    return
  raise errors.ConfigError(
      f'{workdir} holds a run (resumable from step {step}) trained with '
      f'another config: {shown}{more}. Use a new --workdir for the new '
      'config, or resume this run with the values it was trained with '
      '(its config is in the checkpoint and in results.json), or continue '
      'it with the new values: --config.train.allow_resume_changes=True. '
      'Only '
      + ', '.join(p.rstrip('.') + ('*' if p.endswith('.') else '')
                  for p in RESUME_MAY_CHANGE) + ' may differ.')


def field_rule(path: str) -> Optional[rules.Rule]:
  """The rule of a dotted field path (None: no rule)."""
  return FIELDS.get(path)


def fields_without_rules(config: ml_collections.ConfigDict) -> list[str]:
  """Fields of `config` that `FIELDS` does not cover."""
  return [path for path, _ in rules.leaf_fields(config)
          if path not in FIELDS]


def rules_without_fields(config: ml_collections.ConfigDict
                         ) -> Sequence[str]:
  """Rules that name no field of `config` (stale after a rename)."""
  present = {path for path, _ in rules.leaf_fields(config)}
  return [path for path in FIELDS if path not in present]
