"""stepline.engine"""
