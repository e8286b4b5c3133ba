"""ament_python package for hvla_ros (also installable with plain pip)."""

from glob import glob

from setuptools import find_namespace_packages, setup

PACKAGE = "hvla_ros"
NODES = ("sim", "planner", "perception", "executor", "refiner")

setup(
    name=PACKAGE,
    version="0.1.0",
    # Namespace discovery also picks up the data-only folders (config/, description/, skills/, refiners/).
    packages=find_namespace_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["py.typed", "config/*.yaml", "config/*.xml", "description/*", "assets/**/*",
                            "skills/**/*", "refiners/**/*"]},
    include_package_data=True,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        # Configuration and robot descriptions live inside the Python package (so a pip install
        # finds them too) and are also installed where ROS tools look for them.
        (f"share/{PACKAGE}/config", glob(f"{PACKAGE}/config/*.yaml") + glob(f"{PACKAGE}/config/*.xml")),
        (f"share/{PACKAGE}/description", glob(f"{PACKAGE}/description/*")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="hvla_ros maintainers",
    maintainer_email="maintainers@hvla-ros.org",
    description="Hierarchical vision-language-action manipulation stack for SO-101 arms.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "hvla = hvla_ros.cli:main",
            *(f"{n}_node = hvla_ros.nodes.{n}_node:main" for n in NODES),
        ],
    },
)
