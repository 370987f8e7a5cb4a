"""Run the real Lambda handlers in-process, as the Lambda service would call them."""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()
_env_lock = threading.Lock()


class LambdaContext:
    """The attributes handlers and Powertools read from the context object."""

    def __init__(self, function_name: str, timeout_s: float = 30.0, memory_mb: int = 256) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(int((self._deadline - time.monotonic()) * 1000), 0)


class LocalFunction:
    """One function of the template: its module loaded fresh with the function's environment."""

    def __init__(
        self, name: str, handler: str, code_dir: Path, env: dict[str, str], timeout_s: float = 30.0
    ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        module_name, _, attr = handler.rpartition(".")
        path = (ROOT / code_dir / f"{module_name.replace('.', '/')}.py").resolve()
        unique = f"_aipm_local_{name}_{next(_counter)}"
        spec = importlib.util.spec_from_file_location(unique, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {handler} from {code_dir}")
        module = importlib.util.module_from_spec(spec)
        # module-scope settings and clients read the environment at import, as on a cold start
        with _env_lock:
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                sys.modules[unique] = module
                spec.loader.exec_module(module)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        self._handler: Callable[[dict, Any], Any] = getattr(module, attr)
        self.module = module

    def invoke(self, event: dict) -> Any:
        return self._handler(event, LambdaContext(self.name, self.timeout_s))
