"""skillorchestra.server"""
