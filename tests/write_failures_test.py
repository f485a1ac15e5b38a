"""Unit tests of `write_failures`: which errors are failed writes, and the
one line that names them (the processes are in tests/stops_test.py)."""
import errno
import pathlib

from absl.testing import absltest

from ama_jax.process import write_failures


class WriteFailuresTest(absltest.TestCase):

  def test_tensorstore_error_names_the_checkpoint_step(self):
    workdir = pathlib.Path(self.create_tempdir().full_path)
    error = ValueError(
        'RESOURCE_EXHAUSTED: Error writing "a/0" in OCDBT database at local '
        f'file "{workdir}/checkpoints/8.orbax-checkpoint-tmp/state/": Failed '
        f'writing: "{workdir}/best/8.orbax-checkpoint-tmp/state/d/ab": Failed '
        "to write 9 bytes to file 7: No space left on device "
        "[os_error_code='28']")
    self.assertEqual(write_failures.cause(error), errno.ENOSPC)
    line = str(write_failures.error_for(error, workdir))
    self.assertStartsWith(line, 'Cannot write the best checkpoint (step 8) '
                          f'({workdir}/best/8.orbax-checkpoint-tmp/state/d/ab)'
                          ': no space left on the device; no checkpoint had '
                          'been written.')

  def test_a_write_without_a_file_name_is_named_by_its_block(self):
    workdir = pathlib.Path(self.create_tempdir().full_path)
    try:
      with write_failures.naming(workdir / 'history.jsonl'):
        raise OSError(errno.EROFS, 'Read-only file system')
    except OSError as e:
      line = str(write_failures.error_for(e, workdir))
    self.assertStartsWith(line, 'Cannot write the training history '
                          f'({workdir}/history.jsonl): the filesystem is '
                          'read-only;')
    self.assertEndsWith(line, 'make it writable, then run the same command '
                        'to start the run.')

  def test_other_errors_are_not_write_failures(self):
    workdir = self.create_tempdir().full_path
    for error in (RuntimeError('RESOURCE_EXHAUSTED: Out of memory while '
                               'trying to allocate 4.0GiB'),
                  PermissionError(errno.EACCES, 'Permission denied',
                                  '/data/images.npy'),
                  ValueError('bad value')):
      self.assertIsNone(write_failures.error_for(error, workdir), error)


if __name__ == '__main__':
  absltest.main()
