"""stepline.protocol"""
