from pretrain.cli import run

run()
