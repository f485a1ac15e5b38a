"""JAX's compilation events, added up per program: trace, lower, compile."""
import collections


# jax.monitoring duration events, by what they time.
_PHASES = {
    '/jax/core/compile/jaxpr_trace_duration': 'trace',
    '/jax/core/compile/jaxpr_to_mlir_module_duration': 'lower',
    '/jax/core/compile/backend_compile_duration': 'compile',
    '/jax/compilation_cache/cache_retrieval_time_sec': 'cache_read',
}


class CompileLog:
  """Seconds per (program, phase) of the JAX compilation events it hears."""

  def __init__(self):
    self.seconds = collections.defaultdict(float)
    self.counts = collections.Counter()

  def __call__(self, event: str, duration: float, **kwargs) -> None:
    phase = _PHASES.get(event)
    if phase is None:
      return
    name = kwargs.get('fun_name', '?')
    if phase == 'trace':  # Traces name the function, the rest its jit.
      name = f'jit({name})'
    self.seconds[name, phase] += duration
    if phase == 'lower':
      self.counts[name] += 1

  def summary(self) -> dict:
    programs = sorted({name for name, _ in self.seconds},
                      key=lambda n: -sum(self.seconds[n, p]
                                         for p in _PHASES.values()))
    totals = {p: round(sum(s for (_, q), s in self.seconds.items()
                           if q == p), 3) for p in _PHASES.values()}
    return {'lowerings': sum(self.counts.values()),
            'programs': len(self.counts),
            'seconds': totals,
            'compile_and_cache_s': round(totals['compile'] +
                                         totals['cache_read'], 3),
            'per_program': {n: {p: round(self.seconds[n, p], 3)
                                for p in _PHASES.values()
                                if self.seconds[n, p]} | {
                                    'lowerings': self.counts[n]}
                            for n in programs}}


def table(name: str, summary: dict) -> str:
  """The run's programs as aligned text lines."""
  lines = [f'{name}: {summary["programs"]} programs, '
           f'{summary["lowerings"]} lowerings; trace '
           f'{summary["seconds"]["trace"]:.2f} s, lower '
           f'{summary["seconds"]["lower"]:.2f} s, XLA compile '
           f'{summary["seconds"]["compile"]:.2f} s, cache reads '
           f'{summary["seconds"]["cache_read"]:.2f} s; run '
           f'{summary["wall_s"]:.1f} s']
  for program, row in summary['per_program'].items():
    cells = ', '.join(f'{k} {v:.2f} s' for k, v in row.items()
                      if k != 'lowerings')
    lines.append(f'  {program:36s} x{row["lowerings"]}  {cells}')
  return '\n'.join(lines)
