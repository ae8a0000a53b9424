"""The baselines a user would run instead of active learning, scored like it: plain MD (:mod:`.md`) and well-tempered
metadynamics (:mod:`.metadynamics`), both KLD against MD steps (= energy evaluations)."""
