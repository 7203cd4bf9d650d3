"""A Flower app whose server audits every client update with gradleak."""
