"""The orchestrator's side of differential privacy: the accountant (ε for δ after T rounds, with Google's
dp-accounting), the plan a run follows (config → PrivacySpec, sampling, δ, target ε) and Poisson selection.
The mechanisms themselves run in the functions (`fedkeeper.runtime.privacy`); docs/privacy.md says how."""
