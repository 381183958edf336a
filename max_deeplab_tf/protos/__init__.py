"""Generated protobuf messages of the experiment configuration.

The modules here are generated from ../../protos/*.proto by
protos/regenerate.py; do not edit them by hand.
"""

import warnings

# The gencode is deliberately older than the runtime (see
# protos/regenerate.py) so that every protobuf TensorFlow accepts can import it;
# protobuf warns about that on each import.
warnings.filterwarnings(
    'ignore', message=r'Protobuf gencode version', category=UserWarning)
