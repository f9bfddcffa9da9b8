"""ament_python packaging of tsa_ros (also installable with plain pip, see the Makefile)."""

from glob import glob

from setuptools import find_packages, setup

package_name = 'tsa_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(include=['tsa_ros', 'tsa_ros.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        (
            'share/' + package_name + '/config',
            glob('config/*.yaml')
            + glob('config/*.rviz')
            + glob('config/*.foxglove.json')
            + glob('config/*.xml'),
        ),
        ('share/' + package_name + '/config/security', glob('config/security/*.xml')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='tsa_ros developers',
    maintainer_email='tsa-ros@example.org',
    description='Redundant teacher-student-adaptive segmentation, robust to adversarial attacks.',
    license='Apache-2.0',
    python_requires='>=3.10',
    entry_points={
        'console_scripts': [
            'tsa = tsa_ros.cli:main',
            'segmenter = tsa_ros.ros.segmenter_node:main',
            'learner = tsa_ros.ros.learner_node:main',
            'fusion = tsa_ros.ros.fusion_node:main',
            'attacker = tsa_ros.ros.attacker_node:main',
            'bag_player = tsa_ros.ros.bag_player_node:main',
            'evaluator = tsa_ros.ros.evaluator_node:main',
            'lifecycle_manager = tsa_ros.ros.lifecycle_manager_node:main',
        ],
    },
)
