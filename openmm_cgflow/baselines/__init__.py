"""The baselines a user would run instead of active learning, scored like it: plain MD (:mod:`.md`), well-tempered
metadynamics (:mod:`.metadynamics`) and OPES (:mod:`.opes`), each as KLD against MD steps (= energy evaluations) and
wall-clock seconds."""
