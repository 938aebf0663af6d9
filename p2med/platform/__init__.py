"""Ray glue of the platform: storage, configs, data pipelines, training, evaluation."""
