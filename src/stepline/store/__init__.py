"""stepline.store"""
