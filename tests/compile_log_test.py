"""Tests of the record of compilation events (`ama_jax.tools.compile_time`)."""
from absl.testing import absltest
import jax
import jax.numpy as jnp

from ama_jax.process import compile_log


class CompileLogTest(absltest.TestCase):

  def test_events_add_up_per_program_and_phase(self):
    log = compile_log.CompileLog()
    log('/jax/core/compile/jaxpr_trace_duration', 0.5, fun_name='step')
    log('/jax/core/compile/jaxpr_to_mlir_module_duration', 0.25,
        fun_name='jit(step)')
    log('/jax/core/compile/backend_compile_duration', 2.0,
        fun_name='jit(step)')
    log('/jax/core/compile/backend_compile_duration', 1.0,
        fun_name='jit(step)')
    log('/jax/core/compile/jaxpr_to_mlir_module_duration', 0.1,
        fun_name='jit(init)')
    log('/jax/some/other_event', 9.0, fun_name='jit(step)')
    summary = log.summary()
    self.assertEqual(summary['programs'], 2)
    self.assertEqual(summary['lowerings'], 2)
    self.assertEqual(summary['seconds']['compile'], 3.0)
    self.assertEqual(summary['compile_and_cache_s'], 3.0)
    self.assertEqual(list(summary['per_program']), ['jit(step)', 'jit(init)'])
    self.assertEqual(summary['per_program']['jit(step)'],
                     {'trace': 0.5, 'lower': 0.25, 'compile': 3.0,
                      'lowerings': 1})
    self.assertIn('jit(step)', compile_log.table('cold', summary | {
        'wall_s': 1.0}))

  def test_a_real_compilation_is_heard(self):
    log = compile_log.CompileLog()
    jax.monitoring.register_event_duration_secs_listener(log)
    try:
      jax.jit(lambda x: jnp.sin(x) * 3.0)(jnp.arange(7.0)).block_until_ready()
    finally:
      jax.monitoring.unregister_event_duration_listener(log)
    summary = log.summary()
    self.assertGreaterEqual(summary['lowerings'], 1)
    self.assertGreater(summary['seconds']['lower'], 0.0)


if __name__ == '__main__':
  absltest.main()
