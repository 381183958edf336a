"""`python -m max_deeplab_tf.predict`: see max_deeplab_tf.inference.predict."""
from max_deeplab_tf.inference.predict import main  # noqa: F401  pylint: disable=unused-import

if __name__ == "__main__":
    from max_deeplab_tf import cli
    cli.run_main(main)
