"""Size bounds checked before anything is allocated: a config, profile or option from a file or a user may
ask for anything (``num_experts: 50000000``). No dependencies, so that the CLI can check options cheaply."""

MAX_EXPERTS = 4096
MAX_DIM = 65536  # input_dim, hidden_dim
MAX_PARAMETERS = 2**28  # values in a model's tensors (1 GiB of float32)
MAX_MAX_LENGTH = 1 << 20  # a backbone's token limit
MAX_VOCABULARY = (
    4096  # lexical router terms: what training keeps (router_inputs.fit_lexical) and a saved model may hold
)
MAX_CONFIG_BYTES = 64 * 1024 * 1024  # a model's config.json (the lexical vocabulary lives in it)
MAX_METRICS_BYTES = 256 * 1024 * 1024  # a model's metrics.json
MAX_SPLIT_BYTES = 512 * 1024 * 1024  # a model's split_ids.json
MAX_PROFILE_BYTES = 64 * 1024 * 1024  # a profile file
MAX_PROFILE_LABELS = 100_000
MAX_ADAPTER_STEPS = 10_000
