"""Everything Ray: the trainable, the study runner (Tuner, restore, repeat stage), early stopping,
callbacks, the study folder and its exports. Built on training/, read by report/."""
