# The cffi extension built from h2_nghttp2_build.py: its ffi and lib are dynamic objects.
from typing import Any

ffi: Any
lib: Any
