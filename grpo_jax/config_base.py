"""The old name of `grpo_jax.config`: this module IS that module (same object), so experiment files that say
`from grpo_jax import config_base; config_base.base_config()` keep working."""

import sys

from grpo_jax import config as _config

sys.modules[__name__] = _config
