"""Session-wide test setup."""

import os
import tempfile

from miajax import compilation_cache

# One persistent compilation cache for the session (never the user's own):
# the scripts the tests run in subprocesses load the programs that earlier
# tests and subprocesses compiled instead of compiling them again.
CACHE = os.environ.setdefault(
  compilation_cache.ENV, tempfile.mkdtemp(prefix="miajax-test-xla-")
)
compilation_cache.use_compilation_cache(CACHE)
