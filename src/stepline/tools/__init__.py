"""stepline.tools"""
