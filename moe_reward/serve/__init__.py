"""Stage 9, serve: the reward model as a service for policy training (RLHF).

`scorer.Scorer` holds one model and its backbone (loaded once per process), a bounded embedding cache and
the label store's profiles (rebuilt from their labels on every request, so a profile labelled in the
dashboard is served without a restart); `batcher.MicroBatcher` turns many concurrent small requests into
one forward pass; `http.create_app` is the FastAPI app (`moe-reward serve`): OpenRLHF's ``/get_reward``,
the native ``/score``, ``/health``, ``/models``, ``/profiles``; `snippets` writes the curl and Python calls
the dashboard shows. The TRL reward function is `moe_reward.rlhf.reward_function`.
"""
