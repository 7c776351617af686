"""Input data: tf.data pipelines, TFRecord conversion and the synthetic dataset."""
