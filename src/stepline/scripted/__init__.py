"""stepline.scripted"""
