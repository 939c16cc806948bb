"""stepline.upstream"""
