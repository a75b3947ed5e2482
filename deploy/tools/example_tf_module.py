"""Example input for tf_module_to_tflite.py: softmax regression with hand-written gradients."""

import tensorflow as tf


class Model(tf.Module):
    """Multinomial logistic regression on 64 features, 10 classes, plain SGD."""

    features = 64
    outputs = 10

    def __init__(self, learning_rate: float = 0.1) -> None:
        super().__init__()
        self.lr = learning_rate
        self.w = tf.Variable(tf.zeros([self.features, self.outputs]), name="w")
        self.b = tf.Variable(tf.zeros([self.outputs]), name="b")

    def weights(self):  # type: ignore[no-untyped-def]
        return {"layers.0.weight": self.w, "layers.0.bias": self.b}

    def forward(self, x):  # type: ignore[no-untyped-def]
        return tf.nn.softmax(tf.matmul(x, self.w) + self.b)

    def train_step(self, x, y):  # type: ignore[no-untyped-def]
        logits = tf.matmul(x, self.w) + self.b
        loss = -tf.reduce_mean(tf.reduce_sum(y * tf.nn.log_softmax(logits), axis=1))
        n = tf.cast(tf.shape(x)[0], tf.float32)  # the dynamic batch size, never a constant
        delta = (tf.nn.softmax(logits) - y) / n
        self.w.assign_sub(self.lr * tf.matmul(x, delta, transpose_a=True))
        self.b.assign_sub(self.lr * tf.reduce_sum(delta, axis=0))
        return loss
