"""stepline.server"""
