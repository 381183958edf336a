"""Installs max_deeplab_tf, its trainer and its experiment configs."""

import setuptools

setuptools.setup(
    name='max_deeplab_tf',
    version='0.1.0',
    description=('MaX-DeepLab (end-to-end panoptic segmentation with mask '
                 'transformers) for TensorFlow 2 / Keras 3.'),
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=setuptools.find_packages(include=['max_deeplab_tf*', 'trainer*']),
    include_package_data=True,
    install_requires=[
        # tf-models-official 2.20 (for orbit) pins tensorflow ~= 2.20.
        'tensorflow~=2.20.0',
        'tf-models-official~=2.20.0',
        'keras>=3.10',
        'numpy',
        'scipy',
        'pycocotools',
        'absl-py',
        # The oldest runtime TensorFlow 2.20 accepts; the checked-in gencode
        # is older still (see protos/regenerate.py).
        'protobuf>=5.28.0',
        'pillow',
        # libspng: decodes the PQ command's PNGs in about a quarter of Pillow's
        # time (benchmarks/README.md).
        'pyspng',
        # zlib-ng: inflates the PNGs' image data for libspng, whose zlib
        # took 1.6 ms a PNG on an AMD EPYC against 0.05 ms
        # (benchmarks/README.md).
        'zlib-ng',
        # Progress bars of the converter, predict and the PQ command.
        'tqdm',
        # The LiteRT interpreter: Predictor.from_tflite and the tests of the
        # .tflite export (the conversion itself is TensorFlow's).
        'ai-edge-litert',
    ],
    extras_require={
        'test': [
            'pytest',
            'pytest-xdist',
            # Only to check that the checked-in gencode matches protos/.
            'grpcio-tools',
        ],
    },
)
