"""Build hook: metadata lives in pyproject.toml; this file only adds the start-up line that lets stock
nnU-Net commands find our trainers (see nnunetv2_diffusion/discovery.py)."""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_FILE = "nnunetv2_diffusion_ext_trainer.pth"


class BuildPyWithStartupHook(build_py):
    """Puts the .pth file at the root of the wheel, i.e. into site-packages, for regular and editable installs.

    A regular wheel is assembled from ``build_lib``; setuptools' editable wheel is assembled from the folder it hands
    to ``install`` as ``install_lib`` and ignores ``build_lib``.
    """

    def run(self):
        super().run()
        self.copy_file(PTH_FILE, self._pth_target(), preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [self._pth_target()]

    def _pth_target(self) -> str:
        root = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        return os.path.join(root, PTH_FILE)


setup(cmdclass={"build_py": BuildPyWithStartupHook})
