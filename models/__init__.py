"""The recurrent classifier, its checkpoints, offline training and online fine-tuning, importers."""
