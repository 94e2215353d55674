"""Train, evaluate and export the FashionMNIST CNN: `python -m training --help`."""
